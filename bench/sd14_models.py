"""Stable Diffusion 1.4-architecture components with seeded random weights, built offline.

The configurations are SD 1.4's (UNet, VAE) and CLIP ViT-L/14's text encoder, with the project's
real CLIP tokenizer. For CFR and fusion only the 2L cross-attention key/value matrices matter, so
`meta_unet` builds the UNet without storage and `edited_matrices` creates just those matrices.
"""

from __future__ import annotations

import torch

from worker.erasure.layers import cross_attention_projections
from worker.erasure.tokenizer import MAX_LENGTH, load_clip_tokenizer

SD14_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)

SD14_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

CLIP_L_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)


def text_encoder(num_hidden_layers: int = 12, seed: int = 0):
    """CLIP ViT-L/14's text encoder (optionally with fewer layers), random weights, eval mode."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(**{**CLIP_L_TEXT_CONFIG, "num_hidden_layers": num_hidden_layers})
    return CLIPTextModel(config).eval().requires_grad_(False)


def meta_unet():
    """SD 1.4's UNet on the meta device: shapes and names, no storage."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SD14_UNET_CONFIG)


def unet_parameter_count(unet: torch.nn.Module) -> int:
    return sum(p.numel() for p in unet.parameters())


def edited_matrices(unet: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each `attn2.to_k|to_v` weight of `unet` with its real shape; random (seeded) values when the
    UNet is on the meta device, a copy of the weight otherwise."""
    generator = torch.Generator().manual_seed(seed)
    matrices = {}
    for name, linear in cross_attention_projections(unet).items():
        weight = linear.weight
        if weight.is_meta:
            d_out, d_in = weight.shape
            matrices[name] = torch.randn(d_out, d_in, generator=generator) / d_in**0.5
        else:
            matrices[name] = weight.detach().float().clone()
    return matrices


def sd14_pipeline(num_text_layers: int = 12, seed: int = 0):
    """A full SD-1.4-architecture `StableDiffusionPipeline` with random weights (~4.3 GB fp32)."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    encoder = text_encoder(num_text_layers, seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**SD14_UNET_CONFIG)
    vae = AutoencoderKL(**SD14_VAE_CONFIG)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=load_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
