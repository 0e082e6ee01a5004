"""The toy world's text-to-image model: Stable Diffusion 1.x's architecture, sized for a CPU.

Same classes and conventions as SD 1.x (CLIP text encoder with the real tokenizer,
cross-attention UNet, KL autoencoder, scaled-linear betas over 1000 steps), so everything that
loads SD 1.x loads it, and erasure edits the same layers it edits in SD 1.x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.erasure.tokenizer import MAX_LENGTH, load_clip_tokenizer

from .world import IMAGE_SIZE

# Every SD 1.x scheduler is configured like this; only the class differs.
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


@dataclass(frozen=True)
class ToyModelSize:
    """The widths that set the model's cost; the defaults are the shipped model's."""

    text_width: int = 96
    text_layers: int = 3
    unet_channels: tuple[int, ...] = (32, 64, 128, 128)
    # Which levels get (self- and cross-) attention. Not the full-resolution one: on a CPU its
    # self-attention over 256 positions cost as much as all the convolutions.
    unet_attention: tuple[bool, ...] = (False, True, True, False)
    # One head of the level's width: diffusers' CPU attention kernel is slow on narrow heads.
    unet_attention_heads: int = 1
    vae_channels: tuple[int, ...] = (32, 32)


def build_text_encoder(size: ToyModelSize):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=size.text_width,
        intermediate_size=4 * size.text_width,
        num_hidden_layers=size.text_layers,
        num_attention_heads=max(1, size.text_width // 32),
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="quick_gelu",
    )
    return CLIPTextModel(config)


def build_unet(size: ToyModelSize):
    from diffusers import UNet2DConditionModel

    attention = size.unet_attention
    if len(attention) != len(size.unet_channels) or not any(attention):
        raise ValueError("unet_attention needs one flag per level, and at least one True")
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=size.unet_channels,
        layers_per_block=1,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        cross_attention_dim=size.text_width,
        # diffusers reads this as the number of heads in SD 1.x UNets
        attention_head_dim=size.unet_attention_heads,
        norm_num_groups=16,
    )


def build_vae(size: ToyModelSize):
    from diffusers import AutoencoderKL

    levels = len(size.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=size.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def build_noise_scheduler():
    """The training-time forward process (same betas as the sampler's)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        **{
            k: v
            for k, v in SCHEDULER_CONFIG.items()
            if k not in ("set_alpha_to_one", "steps_offset")
        }
    )


def assemble_pipeline(vae, text_encoder, unet, tokenizer=None):
    """A `StableDiffusionPipeline` of these parts, SD 1.x's tokenizer and a DDIM sampler."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer or load_clip_tokenizer(),
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_toy_pipeline(seed: int = 0, size: ToyModelSize | None = None):
    """The untrained toy pipeline, with seeded random weights.

    Args:
        seed: seeds the initial weights.
        size: the widths; the shipped model's by default.
    """
    size = size or ToyModelSize()
    torch.manual_seed(seed)
    return assemble_pipeline(build_vae(size), build_text_encoder(size), build_unet(size))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
