"""The judge: saved and loaded exactly; the shipped one reads fresh renders correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worker.toy.dataset import LABEL_NAMES, render_scenes
from worker.toy.judge import JUDGE_FILE, Judge, accuracy, images_to_tensor, load_judge, save_judge

SHIPPED_JUDGE = Path(__file__).parents[2] / "worker" / "toy" / "model" / JUDGE_FILE


def test_saved_judge_predicts_like_the_original(tmp_path):
    torch.manual_seed(0)
    judge = Judge().eval()
    scenes = render_scenes(16, seed=0)
    loaded = load_judge(save_judge(judge, tmp_path / JUDGE_FILE))
    images = images_to_tensor(scenes.images)
    assert next(loaded.parameters()).dtype == torch.float32
    for kind, logits in judge(images).items():
        assert logits.shape == (16, len(LABEL_NAMES[kind]))
        assert torch.allclose(logits, loaded(images)[kind], atol=0.05)  # stored in fp16
        assert torch.equal(logits.argmax(1), loaded(images)[kind].argmax(1))


def test_rendered_sets_are_seeded_and_labelled():
    a, b = render_scenes(40, seed=1), render_scenes(40, seed=1, workers=2)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, render_scenes(40, seed=2).images)
    assert a.scene(0).object == LABEL_NAMES["object"][a.labels["object"][0]]


@pytest.mark.skipif(not SHIPPED_JUDGE.is_file(), reason="no shipped judge")
def test_shipped_judge_reads_unseen_renders():
    scores = accuracy(load_judge(SHIPPED_JUDGE), render_scenes(400, seed=424242))
    assert scores["object"] >= 0.97 and scores["style"] >= 0.95


def test_judge_can_learn_from_an_autoencoders_reconstructions():
    from worker.toy.judge import autoencoded, train_judge
    from worker.toy.model import build_vae

    from .conftest import TINY_SIZE

    torch.manual_seed(0)
    vae = build_vae(TINY_SIZE)
    scenes = render_scenes(8, seed=0)
    again = autoencoded(vae, scenes.images)
    assert again.shape == scenes.images.shape and again.dtype == np.uint8
    assert not np.array_equal(again, scenes.images)
    lines = []
    _, scores = train_judge(
        seed=0, scenes=256, epochs=1, workers=1, autoencoder=vae, held_out=64, log=lines.append
    )
    assert len(lines) == 1 and "object_autoencoded" in lines[0]
    assert set(scores) == {f"{k}{s}" for k in LABEL_NAMES for s in ("", "_autoencoded")}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
