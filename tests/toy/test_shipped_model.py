"""The shipped toy model: loads as SD 1.x in fp32, fits its size budget, draws what it is told."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.toy.judge import JUDGE_FILE, load_judge
from worker.toy.prompts import concept_prompts
from worker.toy.scoring import generate_images, judged_correct

MODEL = Path(__file__).parents[2] / "worker" / "toy" / "model"
PIPELINE = MODEL / "pipeline"

pytestmark = pytest.mark.skipif(
    not (PIPELINE / "model_index.json").is_file() or not (MODEL / JUDGE_FILE).is_file(),
    reason="the toy model is not trained yet",
)


def test_shipped_files_fit_in_30_mb():
    shipped = [p for p in MODEL.rglob("*") if p.is_file() and "checkpoint" not in p.parts]
    assert sum(p.stat().st_size for p in shipped) <= 30 * 2**20


def test_shipped_pipeline_draws_the_named_objects():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE, dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32
    names = ["star", "heart", "house", "fish", "cup", "moon", "gear", "crown"]
    prompts = [concept_prompts(n, 1, seed=11)[0] for n in names]
    images = generate_images(pipe, [p for p, _ in prompts], seeds=list(range(len(names))))
    correct = judged_correct(
        load_judge(MODEL / JUDGE_FILE), images, [labels for _, labels in prompts], "object"
    )
    assert correct.sum() >= 6
