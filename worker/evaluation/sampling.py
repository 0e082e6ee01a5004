"""Seeded image generation for evaluations: one seed per image, independent of batching.

Image k of a prompt starts from noise drawn by its own CPU generator seeded with
`prompt seed + k`, so an image is the same whether it was drawn alone or in a batch, and a
prompt generated for one metric is reused by every other metric that asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from worker.erasure.errors import ErasureCancelled, ErasureInputError

from .prompts import PromptRecord


@dataclass(frozen=True)
class SamplerSettings:
    """How every evaluation image is drawn (a prompt file's per-row seed/guidance win)."""

    seed: int = 0
    steps: int = 25
    guidance_scale: float = 7.5
    width: int | None = None
    height: int | None = None
    images_per_prompt: int = 1
    batch_size: int = 4

    def validate(self) -> SamplerSettings:
        for name in ("steps", "images_per_prompt", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ErasureInputError(f"{name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ErasureInputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0 <= float(self.guidance_scale) <= 50:
            raise ErasureInputError(f"guidance_scale must be in [0, 50], got {self.guidance_scale}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageRequest:
    """One prompt as it will be sampled: its text, its first seed and its guidance scale."""

    text: str
    seed: int
    guidance: float

    def seeds(self, count: int) -> list[int]:
        return [self.seed + k for k in range(count)]


def image_request(record: PromptRecord, settings: SamplerSettings) -> ImageRequest:
    seed = settings.seed if record.seed is None else record.seed
    guidance = settings.guidance_scale if record.guidance is None else record.guidance
    return ImageRequest(record.text, int(seed), float(guidance))


@dataclass
class EditedModel:
    """A pipeline and the edit to hold while sampling (None: its base weights).

    Several labels can share one pipeline this way ({"base": EditedModel(pipe, None),
    "erased": EditedModel(pipe, edit)}): the edit is applied or removed before each label's
    images are drawn, so one copy of the model is kept in memory.
    """

    pipe: object
    edit: object | None = None

    def activate(self):
        from worker.erasure.edit import EditedUnet

        edited = EditedUnet.of(self.pipe.unet)
        if self.edit is None:
            if edited.applied is not None:
                edited.restore()
        elif edited.applied is not self.edit:
            edited.apply(self.edit)
        return self.pipe


def activate(model):
    """The pipeline to sample from: an `EditedModel` is switched to its edit first."""
    return model.activate() if isinstance(model, EditedModel) else model


def image_size(pipe, settings: SamplerSettings) -> tuple[int, int]:
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = settings.width or native, settings.height or native
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if width % multiple or height % multiple:
        raise ErasureInputError(f"width and height must be multiples of {multiple} for this model")
    return width, height


def initial_noise(pipe, seed: int, width: int, height: int) -> torch.Tensor:
    """The latent noise of one image, drawn on the CPU so every device starts alike."""
    shape = (
        pipe.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def generate_for_requests(
    pipe,
    requests: Sequence[ImageRequest],
    settings: SamplerSettings,
    *,
    on_image: Callable[[int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[ImageRequest, list]:
    """`settings.images_per_prompt` PIL images per request, batched by guidance scale.

    Args:
        pipe: a `StableDiffusionPipeline` (base or edited).
        requests: the prompts to draw; duplicates are drawn once.
        settings: steps, size, images per prompt and batch size.
        on_image: called with the number of images just finished, after each batch.
        should_cancel: polled before each batch; `ErasureCancelled` is raised when True.
    """
    width, height = image_size(pipe, settings)
    count = settings.images_per_prompt
    jobs = [(r, k) for r in dict.fromkeys(requests) for k in range(count)]
    jobs.sort(key=lambda job: job[0].guidance)  # a batch shares one guidance scale
    images: dict[ImageRequest, list] = {r: [None] * count for r in dict.fromkeys(requests)}
    device, dtype = pipe.unet.device, pipe.unet.dtype
    start = 0
    while start < len(jobs):
        guidance = jobs[start][0].guidance
        batch = [j for j in jobs[start : start + settings.batch_size] if j[0].guidance == guidance]
        if should_cancel and should_cancel():
            raise ErasureCancelled("the evaluation was cancelled")
        noise = torch.stack([initial_noise(pipe, r.seed + k, width, height) for r, k in batch])
        with torch.inference_mode():
            result = pipe(
                [r.text for r, _ in batch],
                num_inference_steps=settings.steps,
                guidance_scale=guidance,
                width=width,
                height=height,
                latents=noise.to(device, dtype),
            )
        for (request, k), image in zip(batch, result.images, strict=True):
            images[request][k] = image
        start += len(batch)
        if on_image:
            on_image(len(batch))
    return images
