"""Image generation from a base or erased pipeline, seeded the same way on every device."""

from __future__ import annotations

import torch

from .errors import ErasureInputError


def generate_images(
    pipe,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    width: int | None = None,
    height: int | None = None,
    num_images: int = 1,
):
    """PIL images for one prompt; the CPU generator makes results identical across devices.

    Args:
        pipe: a `StableDiffusionPipeline` (base, or with an edit applied).
        prompt: the text prompt.
        negative_prompt: what to steer away from, if anything.
        seed: the random seed of the initial noise.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        width: image width in pixels (default: the model's native size).
        height: image height in pixels (default: the model's native size).
        num_images: how many images (seeds `seed`, drawn from one generator).
    """
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = width or native, height or native
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if width % multiple or height % multiple:
        raise ErasureInputError(f"width and height must be multiples of {multiple} for this model")
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        result = pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            num_images_per_prompt=num_images,
            generator=generator,
        )
    return result.images
