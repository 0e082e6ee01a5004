"""Shared fixtures: the tiny SD-1.x pipeline (random weights, built offline once per session)
for fast unit tests, and the project's trained toy model for end-to-end ones."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny pipeline folder (seed 0), loadable like any diffusers model."""
    from worker.erasure.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def toy_model_dir():
    """The shipped toy model's diffusers pipeline folder."""
    from worker.toy.commands import SHIPPED_MODEL

    pipeline = SHIPPED_MODEL / "pipeline"
    if not (pipeline / "model_index.json").is_file():
        pytest.fail(f"no toy model in {pipeline}: `mace toy train --out {SHIPPED_MODEL}` makes it")
    return pipeline


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["MACE_CACHE_DIR"] = str(tmp_path_factory.mktemp("mace-cache"))
