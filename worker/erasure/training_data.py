"""Stage 2's training data: seeded images of a concept group with their masks, and where the
concept phrase sits among a prompt's tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .attention_capture import capture_cross_attention
from .concepts import ConceptGroup
from .errors import ErasureCancelled, ErasureInputError
from .masks import ConceptAttentionMaps, MaskProvider
from .masks import mask_provider as provider_named
from .pairing import TokenCounter, end_token_position, phrase_span
from .templates import fill

DEFAULT_IMAGES_PER_GROUP = 8


@dataclass
class TrainingSet:
    """The images one group's LoRA is trained on.

    `images` is (N, 3, H, W) float32 in [0, 1] and `masks` (N, H, W) bool, both on the CPU;
    image i was generated from `prompts[i]` (showing `phrases[i]`) with seed `seeds[i]`.
    """

    group: ConceptGroup
    images: torch.Tensor
    masks: torch.Tensor
    prompts: list[str]
    phrases: list[str]
    seeds: list[int]
    mask_provider: str

    def __len__(self) -> int:
        return len(self.prompts)


def phrase_token_positions(tokenizer, template: str, phrase: str) -> list[int]:
    """Positions (BOS = 0) of the phrase's tokens in the padded `fill(template, phrase)`."""
    start, count = phrase_span(TokenCounter(tokenizer), template, phrase)
    return list(range(start, start + count))


def end_token_positions(tokenizer, prompt: str) -> list[int]:
    """Positions of the end token and all padding after it in the padded prompt."""
    end = end_token_position(TokenCounter(tokenizer), prompt)
    return list(range(end, tokenizer.model_max_length))


def image_seed(seed: int, group_index: int, image_index: int) -> int:
    """A 63-bit seed for one training image, independent across groups and images."""
    words = np.random.SeedSequence([seed, group_index, image_index]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def generate_training_set(
    pipe,
    group: ConceptGroup,
    group_index: int,
    *,
    seed: int,
    count: int = DEFAULT_IMAGES_PER_GROUP,
    mask_provider: str | MaskProvider = "attention",
    num_inference_steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> TrainingSet:
    """One group's training images and masks (`generate_training_sets` of one group)."""
    return generate_training_sets(
        pipe,
        [(group_index, group)],
        seed=seed,
        count=count,
        mask_provider=mask_provider,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        batch_size=batch_size,
        progress=progress,
        should_cancel=should_cancel,
    )[0]


@dataclass(frozen=True)
class _ImageSpec:
    """One training image to draw: which group it belongs to and how it is seeded."""

    slot: int
    prompt: str
    phrase: str
    seed: int
    positions: list[int]


def generate_training_sets(
    pipe,
    groups: Sequence[tuple[int, ConceptGroup]],
    *,
    seed: int,
    count: int = DEFAULT_IMAGES_PER_GROUP,
    mask_provider: str | MaskProvider = "attention",
    num_inference_steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[TrainingSet]:
    """Generate several groups' training images and masks, reproducibly, many per sampling call.

    Image i of a group shows target phrase `i mod len(targets)` in image template
    `i mod len(image_templates)` and starts from noise drawn with a generator seeded by
    `image_seed(seed, group_index, i)`, so it is the same picture (up to float rounding) whatever
    the batch it is drawn in. Pass the base model: its attention maps, captured during the same
    generation, make the `attention` masks.

    Args:
        pipe: a diffusers `StableDiffusionPipeline`.
        groups: (group index in the request, group) pairs; the index is part of every seed.
        seed: the run's seed.
        count: images per group (>= 1).
        mask_provider: a mask provider or its name in `MASK_PROVIDERS`.
        num_inference_steps: denoising steps per image.
        guidance_scale: classifier-free guidance scale.
        height: image height; the UNet's native size when omitted.
        width: image width; the UNet's native size when omitted.
        batch_size: images per sampling call; all of them in one call when omitted.
        progress: called as `progress(images done, images in all)` after each call.
        should_cancel: polled at every denoising step; a true result raises `ErasureCancelled`.
    """
    if count < 1:
        raise ErasureInputError(f"count must be >= 1, got {count}")
    if batch_size is not None and batch_size < 1:
        raise ErasureInputError(f"batch_size must be >= 1, got {batch_size}")
    provider = provider_named(mask_provider) if isinstance(mask_provider, str) else mask_provider
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or native, width or native
    latent_size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    specs = [
        _image_spec(pipe.tokenizer, slot, group, group_index, index, seed)
        for slot, (group_index, group) in enumerate(groups)
        for index in range(count)
    ]
    batch_size = batch_size or len(specs)
    images, masks = [], []
    for start in range(0, len(specs), batch_size):
        chunk = specs[start : start + batch_size]
        recorder = (
            ConceptAttentionMaps([spec.positions for spec in chunk], latent_size)
            if provider.uses_attention
            else None
        )
        pictures = _generate(
            pipe,
            chunk,
            recorder=recorder,
            should_cancel=should_cancel,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )
        concept_maps = recorder.concept_maps() if recorder is not None else [None] * len(chunk)
        for spec, picture, concept_map in zip(chunk, pictures, concept_maps, strict=True):
            images.append(picture)
            masks.append(provider(picture, spec.phrase, concept_map).bool().cpu())
        if progress is not None:
            progress(len(images), len(specs))
    return [
        _training_set(group, provider.name, specs, images, masks, slot)
        for slot, (_, group) in enumerate(groups)
    ]


def _image_spec(tokenizer, slot, group: ConceptGroup, group_index, index, seed) -> _ImageSpec:
    phrase = group.targets[index % len(group.targets)]
    template = group.image_templates[index % len(group.image_templates)]
    return _ImageSpec(
        slot=slot,
        prompt=fill(template, phrase),
        phrase=phrase,
        seed=image_seed(seed, group_index, index),
        positions=phrase_token_positions(tokenizer, template, phrase),
    )


def _training_set(group, provider_name, specs, images, masks, slot) -> TrainingSet:
    rows = [row for row, spec in enumerate(specs) if spec.slot == slot]
    return TrainingSet(
        group=group,
        images=torch.stack([images[row] for row in rows]),
        masks=torch.stack([masks[row] for row in rows]),
        prompts=[specs[row].prompt for row in rows],
        phrases=[specs[row].phrase for row in rows],
        seeds=[specs[row].seed for row in rows],
        mask_provider=provider_name,
    )


def _generate(pipe, specs, *, recorder, should_cancel, **call_options) -> torch.Tensor:
    """The images (B x 3 x H x W in [0, 1], on the CPU) of one sampling call."""
    generators = [torch.Generator("cpu").manual_seed(spec.seed) for spec in specs]
    capture = (
        capture_cross_attention(pipe.unet, recorder) if recorder is not None else nullcontext()
    )

    def poll_cancel(pipeline, step, timestep, outputs):
        if should_cancel is not None and should_cancel():
            raise ErasureCancelled("cancelled while generating the training images")
        return outputs

    if should_cancel is not None and should_cancel():
        raise ErasureCancelled("cancelled while generating the training images")
    with capture, _vae_slicing(pipe.vae):
        output = pipe(
            [spec.prompt for spec in specs],
            generator=generators,
            output_type="pt",
            callback_on_step_end=poll_cancel,
            **call_options,
        )
    return output.images.detach().float().cpu().clamp(0, 1)


@contextmanager
def _vae_slicing(vae):
    """Decode a batch one image at a time: full-size VAE activations of a batch are large."""
    before = getattr(vae, "use_slicing", None)
    if before is not None:
        vae.use_slicing = True
    try:
        yield
    finally:
        if before is not None:
            vae.use_slicing = before
