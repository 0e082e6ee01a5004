"""A tiny training plan: the toy model's code paths in seconds."""

from __future__ import annotations

import pytest

from worker.toy.model import ToyModelSize
from worker.toy.train import TrainingPlan

TINY_SIZE = ToyModelSize(
    text_width=32,
    text_layers=1,
    unet_channels=(32, 64),
    unet_attention=(True, False),
    vae_channels=(16, 32),
)


@pytest.fixture
def tiny_plan() -> TrainingPlan:
    """Minutes are generous so that the step caps, not the clock, end each phase."""
    return TrainingPlan(
        minutes=60,
        seed=3,
        scenes=256,
        batch_size=8,
        max_vae_steps=3,
        max_unet_steps=4,
        log_every=2,
        size=TINY_SIZE,
    )
