"""The toy model is Stable Diffusion 1.x's architecture, small enough to ship."""

from __future__ import annotations

import torch

from worker.toy.model import SCHEDULER_CONFIG, build_toy_pipeline, parameter_count

SHIPPING_LIMIT_BYTES = 30 * 2**20


def test_shipped_size_has_sd1_architecture_and_fits_in_fp16():
    pipe = build_toy_pipeline(seed=0)
    unet, text = pipe.unet, pipe.text_encoder
    assert "CrossAttnDownBlock2D" in unet.config.down_block_types
    assert unet.config.cross_attention_dim == text.config.hidden_size
    assert unet.config.in_channels == pipe.vae.config.latent_channels == 4
    assert len(pipe.vae.config.block_out_channels) == 2  # one 2x downsampling
    assert text.config.vocab_size == len(pipe.tokenizer) == 49408
    assert pipe.tokenizer("a star").input_ids[0] == 49406  # SD 1.x's CLIP tokenizer
    assert type(text).__name__ == "CLIPTextModel"
    for key, value in SCHEDULER_CONFIG.items():
        assert pipe.scheduler.config[key] == value
    total = sum(parameter_count(m) for m in (unet, text, pipe.vae))
    assert total * 2 < SHIPPING_LIMIT_BYTES  # weights are stored in fp16


def test_initial_weights_follow_the_seed():
    a, b, c = (build_toy_pipeline(seed=s).unet for s in (1, 1, 2))
    first = lambda m: next(iter(m.parameters()))  # noqa: E731
    assert torch.equal(first(a), first(b)) and not torch.equal(first(a), first(c))
