"""The evaluation run (shared images, progress, cancel) and `mace evaluate` end to end."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from worker.erasure.base_model import model_identity
from worker.erasure.edit import CompactEdit
from worker.erasure.errors import ErasureCancelled, ErasureInputError
from worker.evaluation.image_grid import GAP, HEADER_HEIGHT, LABEL_WIDTH
from worker.evaluation.run import run_evaluation
from worker.evaluation.sampling import EditedModel, SamplerSettings

FAST = SamplerSettings(steps=2, batch_size=2)


class _Identity:
    def __init__(self, **fields):
        self.fields = fields

    def to_dict(self):
        return self.fields


def _scaled_edit(identity, scale=0.3):
    """An edit that scales every key/value projection's input: visibly changes the images."""
    metadata = {"base_model": identity.to_dict(), "concepts": [{"targets": ["cat"]}], "seed": 0}
    return CompactEdit(torch.eye(32) * scale, {}, metadata)


def test_images_are_shared_between_metrics_and_progress_reaches_the_total(
    tiny_pipe, resources, tmp_path
):
    seen = []
    report = run_evaluation(
        {"base": tiny_pipe},
        [
            {"name": "clip_score"},
            {"name": "image_grid"},
            {"name": "clip_score", "config": {"prompts": ["a cat", "a bird"]}},
        ],
        tmp_path,
        prompt_sets={"default": ["a cat", "a dog"]},
        sampler=FAST,
        resources=resources,
        progress=lambda done, total: seen.append((done, total)),
    )
    # Three distinct prompts drawn once each, plus two scored metric evaluations.
    assert seen[-1] == (5, 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert set(report["summary"]) == {"clip_score", "clip_score#2"}
    assert report["sampler"]["seed"] == 0


def test_cancel_between_steps(tiny_pipe, resources, tmp_path):
    with pytest.raises(ErasureCancelled):
        run_evaluation(
            {"base": tiny_pipe},
            [{"name": "clip_score"}],
            tmp_path,
            prompt_sets={"default": ["a cat"]},
            sampler=FAST,
            resources=resources,
            should_cancel=lambda: True,
        )


def test_unknown_metrics_and_service_paths_are_refused(tiny_pipe, tmp_path):
    with pytest.raises(ErasureInputError, match="unknown metric"):
        run_evaluation({"base": tiny_pipe}, [{"name": "bleu"}], tmp_path)
    with pytest.raises(ErasureInputError, match="no prompt set named"):
        run_evaluation(
            {"base": tiny_pipe},
            [{"name": "nudenet", "config": {"prompts": "/etc/passwd"}}],
            tmp_path,
            allow_paths=False,
        )


def test_shared_pipeline_base_and_erased_are_both_drawn_and_left_as_found(tiny_pipe, tmp_path):
    edit = _scaled_edit(_Identity(name="in-memory"))
    models = {"base": EditedModel(tiny_pipe, None), "erased": EditedModel(tiny_pipe, edit)}
    weight = next(iter(tiny_pipe.unet.parameters())).clone()
    report = run_evaluation(
        models,
        [{"name": "image_grid"}],
        tmp_path,
        prompt_sets={"default": ["a cat"]},
        sampler=FAST,
        save_images=True,
    )
    paths = report["metrics"][0]["images"]
    base = np.asarray(Image.open(tmp_path / paths["base"][0]), dtype=np.int16)
    erased = np.asarray(Image.open(tmp_path / paths["erased"][0]), dtype=np.int16)
    assert np.abs(base - erased).max() > 5
    assert torch.equal(next(iter(tiny_pipe.unet.parameters())), weight)
    assert report["models"]["erased"]["edit"]["concepts"] == [{"targets": ["cat"]}]


def test_mace_evaluate_writes_report_grid_and_html(tiny_model_dir, tmp_path, capsys):
    edit_dir = tmp_path / "erased"
    _scaled_edit(model_identity(str(tiny_model_dir))).save(edit_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--edit",
            str(edit_dir),
            "--prompts",
            str(prompts),
            "--metric",
            'nudenet:{"threshold": 0.6}',
            "--metric",
            'image_grid:{"cell_size": 64}',
            "--steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["base", "erased"]
    assert report["models"]["base"]["model"]["sha256"] == model_identity(str(tiny_model_dir)).sha256
    assert len(report["models"]["erased"]["edit_sha256"]) == 64
    nudenet = report["metrics"][0]
    assert nudenet["settings"]["threshold"] == 0.6
    assert set(nudenet["results"]) == {"base", "erased"}
    assert nudenet["sampled"]["prompts"][0] == {"prompt": "a cat", "seeds": [3], "guidance": 7.5}
    grid = Image.open(out / "grid.png")
    assert grid.size == (LABEL_WIDTH + 2 * (64 + GAP), HEADER_HEIGHT + 2 * (64 + GAP))
    left = np.asarray(
        grid.crop((LABEL_WIDTH, HEADER_HEIGHT, LABEL_WIDTH + 64, HEADER_HEIGHT + 64)),
        dtype=np.int16,
    )
    right = np.asarray(
        grid.crop(
            (LABEL_WIDTH + 64 + GAP, HEADER_HEIGHT, LABEL_WIDTH + 128 + GAP, HEADER_HEIGHT + 64)
        ),
        dtype=np.int16,
    )
    assert np.abs(left - right).max() > 5  # base | erased differ
    html = (out / "report.html").read_text()
    inlined = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(inlined) == 1 and base64.b64decode(inlined[0]) == (out / "grid.png").read_bytes()
    assert "<th>base</th><th>erased</th>" in html and 'src="http' not in html
    assert "nudenet: base 0.0000, erased 0.0000" in capsys.readouterr().out


def test_mace_evaluate_refuses_an_edit_of_another_base(tiny_model_dir, tmp_path, capsys):
    _scaled_edit(_Identity(name="other", sha256="0" * 64)).save(tmp_path / "erased")
    (tmp_path / "p.txt").write_text("a cat\n")
    args = [
        "evaluate",
        "--model",
        str(tiny_model_dir),
        "--edit",
        str(tmp_path / "erased"),
        "--metric",
        "image_grid",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--prompts", str(tmp_path / "p.txt")]) == 2
    assert "made from a base model with hash 000000000000" in capsys.readouterr().err
    assert main([*args, "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert "no prompt file" in capsys.readouterr().err
