"""Scoring: per-concept judge accuracy, on canonical and on synonym prompts."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from app.cli import main
from worker.toy.dataset import LABEL_NAMES
from worker.toy.judge import Judge, save_judge
from worker.toy.model import build_toy_pipeline
from worker.toy.prompts import CONCEPTS, OBJECT_FORMS, STYLE_FORMS
from worker.toy.scoring import score_concepts

from .conftest import TINY_SIZE


def _named(prompt: str, forms: dict[str, tuple[str, ...]]) -> str | None:
    for name, words in forms.items():
        if any(re.search(rf"\b{re.escape(w)}\b", prompt) for w in words):
            return name
    return None


class ParsingPipeline:
    """Stands in for a model: writes the object and style its prompt names into the pixels;
    objects in `erased` come out as circles."""

    def __init__(self, erased=()):
        self.erased, self.calls = set(erased), 0

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, prompt, generator, output_type, **kwargs):
        self.calls += 1
        images = np.zeros((len(prompt), 32, 32, 3), np.float32)
        for i, text in enumerate(prompt):
            obj = _named(text, OBJECT_FORMS)
            obj = "circle" if obj in self.erased else obj
            style = _named(text, STYLE_FORMS) or "solid"
            images[i, 0, 0, 0] = LABEL_NAMES["object"].index(obj) / 255
            images[i, 0, 0, 1] = LABEL_NAMES["style"].index(style) / 255
        return SimpleNamespace(images=images)


class PixelJudge:
    def predict(self, images):
        codes = torch.round(images[:, :2, 0, 0] * 255).long().numpy()
        return {"object": codes[:, 0], "style": codes[:, 1]}


def test_an_exact_model_scores_one_and_an_erased_concept_zero():
    exact = score_concepts(ParsingPipeline(), PixelJudge(), per_concept=3, batch_size=16)
    assert set(exact.per_concept) == {c.name for c in CONCEPTS}
    assert exact.mean == 1.0 and exact.synonym_mean == 1.0
    assert set(exact.per_synonym_concept) == {c.name for c in CONCEPTS if c.has_synonyms}

    pipe = ParsingPipeline(erased={"star", "heart"})
    erased = score_concepts(pipe, PixelJudge(), per_concept=3, batch_size=16)
    assert erased.per_concept["star"] == erased.per_concept["heart"] == 0.0
    assert erased.per_synonym_concept["star"] == 0.0
    assert erased.mean == pytest.approx(1 - 2 / len(CONCEPTS))
    assert erased.kind_mean("style") == 1.0
    images = 3 * (len(CONCEPTS) + len(exact.per_synonym_concept))
    assert pipe.calls == -(-images // 16)


def test_mace_toy_judge_scores_a_saved_pipeline(tmp_path, capsys):
    model = tmp_path / "toy"
    build_toy_pipeline(seed=0, size=TINY_SIZE).save_pretrained(model / "pipeline")
    torch.manual_seed(0)
    save_judge(Judge(), model / "judge.safetensors")
    report = tmp_path / "scores.json"
    argv = [
        "toy",
        "judge",
        "--model",
        str(model),
        "--per-concept",
        "1",
        "--steps",
        "2",
        "--json",
        str(report),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean over 43 concepts" in printed and "synonym prompts" in printed
    scores = json.loads(report.read_text())
    assert len(scores["per_concept"]) == len(CONCEPTS)
    assert all(v in (0.0, 1.0) for v in scores["per_concept"].values())
    assert main(argv[:-2]) == 0
    assert capsys.readouterr().out == printed  # same seed, same images, same verdicts
