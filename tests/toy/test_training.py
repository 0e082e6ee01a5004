"""Training the toy model: finite losses, exact resume, a loadable SD 1.x pipeline."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from worker.toy.train import CHECKPOINT_DIR, ToyTrainer, train_toy_model


def _ready_for_unet(out, plan) -> ToyTrainer:
    trainer = ToyTrainer(out, plan, threads=1, echo=lambda line: None)
    trainer.scenes = trainer.load_scenes()
    trainer.train_vae()
    return trainer


def test_training_writes_a_pipeline_that_loads_as_stable_diffusion(tmp_path, tiny_plan):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "toy"
    path = train_toy_model(out, tiny_plan, threads=1, echo=lambda line: None)
    events = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] in ("vae", "unet")]
    plan = tiny_plan
    assert len(losses) == (plan.max_vae_steps + plan.max_unet_steps) // plan.log_every
    assert all(np.isfinite(losses))
    assert events[-1]["event"] == "done" and events[-1]["step"] == tiny_plan.max_unet_steps

    pipe = StableDiffusionPipeline.from_pretrained(path, dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}
    assert pipe.vae.config.scaling_factor == pytest.approx(events[-4]["scaling_factor"], rel=1e-4)
    image = pipe(
        "a red star in dotted style",
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    stored = torch.load(out / CHECKPOINT_DIR / "state.pt", weights_only=False)
    assert stored["phase"] == "done"

    # resumed with a larger budget, a finished run trains on and saves again
    longer = replace(tiny_plan, max_unet_steps=6)
    train_toy_model(out, longer, resume=True, threads=1, echo=lambda line: None)
    events = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["step"] == 6
    resumed = StableDiffusionPipeline.from_pretrained(path, dtype=torch.float32)
    assert not torch.equal(next(resumed.unet.parameters()), next(pipe.unet.parameters()))


def test_resuming_continues_exactly_as_an_uninterrupted_run(tmp_path, tiny_plan):
    straight = _ready_for_unet(tmp_path / "a", tiny_plan)
    for _ in range(4):
        straight.unet_step()

    interrupted = _ready_for_unet(tmp_path / "b", tiny_plan)
    for _ in range(2):
        interrupted.unet_step()
    interrupted.save_checkpoint()
    resumed = ToyTrainer(tmp_path / "b", tiny_plan, threads=1, echo=lambda line: None)
    resumed.load_checkpoint()
    for name in ("unet", "text_encoder", "ema_unet", "vae"):
        for a, b in zip(
            getattr(interrupted, name).state_dict().values(),
            getattr(resumed, name).state_dict().values(),
            strict=True,
        ):
            assert torch.equal(a, b)
    resumed.scenes = resumed.load_scenes()
    resumed.ensure_latents()
    for _ in range(2):
        resumed.unet_step()

    assert resumed.step == straight.step == 4
    for a, b in zip(straight.unet.parameters(), resumed.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        straight.ema_text_encoder.parameters(), resumed.ema_text_encoder.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    untrained = ToyTrainer(tmp_path / "c", tiny_plan, threads=1, echo=lambda line: None)
    assert not torch.equal(next(untrained.unet.parameters()), next(straight.unet.parameters()))


def test_a_used_folder_needs_resume_and_a_matching_seed(tmp_path, tiny_plan):
    out = tmp_path / "toy"
    trainer = _ready_for_unet(out, tiny_plan)
    trainer.save_checkpoint()
    with pytest.raises(FileExistsError):
        train_toy_model(out, tiny_plan, threads=1, echo=lambda line: None)
    other = ToyTrainer(out, replace(tiny_plan, seed=4), threads=1, echo=lambda line: None)
    with pytest.raises(ValueError, match="seed"):
        other.load_checkpoint()
