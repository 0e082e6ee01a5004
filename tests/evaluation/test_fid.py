"""Fréchet distance against closed forms, and the FID metric on the tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from worker.erasure.errors import ModelNotFoundError
from worker.evaluation.fid import feature_statistics, fid_from_features, frechet_distance
from worker.evaluation.inception import INCEPTION_ENV, inception_path


def test_a_feature_set_against_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(50, 6))
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_gaussians_match_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    # |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (1 + 1 + 4)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(11.0, abs=1e-12)


def test_general_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = x @ x.T + np.eye(5), y @ y.T + 0.5 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_sampled_gaussian_sets_match_the_closed_form_of_their_statistics():
    rng = np.random.default_rng(2)
    a = rng.normal(0.0, 1.0, size=(4000, 3))
    b = rng.normal(2.0, 3.0, size=(4000, 3))
    # Population value: 3 * 2^2 + 3 * (1 - 3)^2 = 24; the estimate converges to it.
    assert fid_from_features(a, b) == pytest.approx(24.0, rel=0.05)
    mu_a, s_a = feature_statistics(a)
    mu_b, s_b = feature_statistics(b)
    assert fid_from_features(a, b) == pytest.approx(frechet_distance(mu_a, s_a, mu_b, s_b))


def test_singular_covariances_stay_finite_and_real():
    rank_one = np.outer([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    value = frechet_distance(np.zeros(3), rank_one, np.zeros(3), rank_one)
    assert value == pytest.approx(0.0, abs=1e-9)


def test_missing_inception_weights_say_where_to_put_them(monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(ModelNotFoundError, match=INCEPTION_ENV):
        inception_path(None)
    with pytest.raises(ModelNotFoundError, match="inception-2015-12-05.pt"):
        inception_path("/nowhere/inception.pt")


def test_fid_metric_end_to_end(tiny_pipe, resources, tmp_path):
    """Reference = the six images of three prompts; generated = the first two prompts' four."""
    from tests.evaluation.conftest import tiny_feature_extractor
    from worker.evaluation.run import run_evaluation
    from worker.evaluation.sampling import SamplerSettings

    prompts = ["a cat", "a dog", "a red car"]
    sampler = SamplerSettings(steps=2, images_per_prompt=2, batch_size=3)
    first = run_evaluation(
        {"base": tiny_pipe},
        [{"name": "image_grid"}],
        tmp_path / "grid",
        prompt_sets={"default": prompts},
        sampler=sampler,
        save_images=True,
    )
    reference = tmp_path / "reference"
    reference.mkdir()
    for i, path in enumerate(first["metrics"][0]["images"]["base"]):
        Image.open(tmp_path / "grid" / path).save(reference / f"{i}.png")
    metrics = [
        {"name": "fid", "config": {"reference_dir": str(reference)}},
        {"name": "fid", "config": {"reference_dir": str(reference), "reference_limit": 4}},
    ]
    report = run_evaluation(
        {"base": tiny_pipe},
        metrics,
        tmp_path / "fid",
        prompt_sets={"default": prompts[:2]},
        sampler=sampler,
        resources=resources,
    )
    against_all, against_same = (m["results"]["base"] for m in report["metrics"])
    assert against_all["details"] == {"generated_images": 4, "reference_images": 6}
    extractor = tiny_feature_extractor()
    images = [Image.open(reference / f"{i}.png") for i in range(6)]
    expected = fid_from_features(extractor.features(images[:4]), extractor.features(images))
    assert expected > 1e-6
    assert against_all["value"] == pytest.approx(expected, rel=1e-6)
    assert against_same["value"] == pytest.approx(0.0, abs=1e-9)
    assert report["metrics"][0]["settings"]["model"] == {"name": "mean-colour-net"}


class _ScriptedPool(torch.nn.Module):
    """Stands in for NVIDIA's TorchScript Inception: same call, 3 features instead of 2048."""

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = images.mean(dim=(2, 3))
        return pooled if return_features else pooled.sum(dim=1, keepdim=True)


def test_torchscript_inception_loads_from_the_env_var(tmp_path, monkeypatch):
    from worker.evaluation.inception import load_inception

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(_ScriptedPool()).save(str(path))
    monkeypatch.setenv(INCEPTION_ENV, str(path))
    extractor = load_inception(None)
    assert extractor.source["path"] == str(path) and len(extractor.source["sha256"]) == 64
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    features = extractor.features([red, Image.new("RGB", (8, 8), (0, 0, 128))])
    assert features.shape == (2, 3)
    assert features[0].tolist() == pytest.approx([255.0, 0.0, 0.0])
    assert features[1].tolist() == pytest.approx([0.0, 0.0, 128.0])
