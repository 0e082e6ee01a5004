"""Fréchet distance between Gaussian fits of image features (FID with Inception features).

d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), all in float64. The trace of the
square root is taken as the sum of sqrt(eigenvalues) of the symmetric PSD matrix
S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2), which stays real and finite where a general
matrix square root of S1 S2 can turn complex on near-singular covariances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.erasure.errors import ErasureInputError

from .metric_base import MetricContext, flatten

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of the rows of `features` (N x D, N >= 2), float64."""
    rows = np.asarray(features, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ErasureInputError("FID needs at least two images on each side")
    return rows.mean(axis=0), np.cov(rows, rowvar=False, ddof=1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2."""
    root = _psd_sqrt(sigma1)
    middle = root @ sigma2 @ root
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
    sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ErasureInputError("the two feature sets have different dimensions")
    diff = mu1 - mu2
    distance = (
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )
    return float(max(distance, 0.0))


def fid_from_features(features_a, features_b) -> float:
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def reference_image_paths(folder: str | Path, limit: int | None = None) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ErasureInputError(f"FID reference_dir: no folder at {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise ErasureInputError(f"FID reference_dir {folder} holds fewer than two images")
    return paths[:limit] if limit else paths


class FidMetric:
    """Config: reference_dir (a folder of images), prompts, inception_path (else the env var
    MACE_INCEPTION_PATH), reference_limit, limit."""

    name = "fid"

    def __init__(self, config: dict, context: MetricContext):
        if not config.get("reference_dir"):
            raise ErasureInputError("fid needs reference_dir: a folder of reference images")
        if not context.allow_paths:
            raise ErasureInputError("fid reads a reference folder; it runs from the CLI only")
        self.reference = reference_image_paths(
            config["reference_dir"], config.get("reference_limit")
        )
        self.reference_dir = str(Path(config["reference_dir"]).expanduser())
        self.inception_path = config.get("inception_path")
        self.prompts = context.prompts(config, "prompts")
        self.source: dict = {}

    def prompt_groups(self) -> dict:
        return {"prompts": self.prompts}

    def evaluate(self, images: dict, resources) -> dict:
        extractor = resources.inception(self.inception_path)
        self.source = extractor.source
        reference = resources.reference_features(extractor, self.reference)
        pictures, _ = flatten(images["prompts"])
        generated = extractor.features(pictures)
        value = fid_from_features(generated, reference)
        return {
            "value": value,
            "details": {"generated_images": len(pictures), "reference_images": len(reference)},
        }

    def describe(self) -> dict:
        return {
            "model": self.source,
            "reference_dir": self.reference_dir,
            "reference_images": len(self.reference),
            "prompts": [p.to_dict() for p in self.prompts],
        }
