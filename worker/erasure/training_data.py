"""Stage 2's training data: seeded images of a concept group with their masks, and where the
concept phrase sits among a prompt's tokens."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .attention_capture import capture_cross_attention
from .concepts import ConceptGroup
from .errors import ErasureCancelled, ErasureInputError
from .masks import ConceptAttentionAccumulator, MaskProvider
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
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> TrainingSet:
    """Generate the group's training images and their masks, reproducibly.

    Image i shows target phrase `i mod len(targets)` in image template `i mod len(image_templates)`,
    generated with a generator seeded by `image_seed(seed, group_index, i)`. Pass the base model:
    its attention maps, captured during the same generation, make the `attention` masks.

    Args:
        pipe: a diffusers `StableDiffusionPipeline`.
        group: the concept group.
        group_index: the group's position in the request (part of every image's seed).
        seed: the run's seed.
        count: images to generate (>= 1).
        mask_provider: a mask provider or its name in `MASK_PROVIDERS`.
        num_inference_steps: denoising steps per image.
        guidance_scale: classifier-free guidance scale.
        height: image height; the UNet's native size when omitted.
        width: image width; the UNet's native size when omitted.
        progress: called as `progress(done, total)` after each image.
        should_cancel: polled before each image; a true result raises `ErasureCancelled`.
    """
    if count < 1:
        raise ErasureInputError(f"count must be >= 1, got {count}")
    provider = provider_named(mask_provider) if isinstance(mask_provider, str) else mask_provider
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or native, width or native
    latent_size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    templates = group.image_templates
    images, image_masks, prompts, phrases, seeds = [], [], [], [], []
    for index in range(count):
        if should_cancel is not None and should_cancel():
            raise ErasureCancelled(f"cancelled while generating images for {group.name!r}")
        phrase = group.targets[index % len(group.targets)]
        template = templates[index % len(templates)]
        prompt = fill(template, phrase)
        image_seed_value = image_seed(seed, group_index, index)
        generator = torch.Generator("cpu").manual_seed(image_seed_value)
        positions = phrase_token_positions(pipe.tokenizer, template, phrase)
        image, concept_map = _generate(
            pipe,
            prompt,
            generator,
            recorder=ConceptAttentionAccumulator(positions, latent_size)
            if provider.uses_attention
            else None,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )
        images.append(image)
        image_masks.append(provider(image, phrase, concept_map).bool().cpu())
        prompts.append(prompt)
        phrases.append(phrase)
        seeds.append(image_seed_value)
        if progress is not None:
            progress(index + 1, count)
    return TrainingSet(
        group=group,
        images=torch.stack(images),
        masks=torch.stack(image_masks),
        prompts=prompts,
        phrases=phrases,
        seeds=seeds,
        mask_provider=provider.name,
    )


def _generate(pipe, prompt, generator, *, recorder, **call_options):
    """One image (3 x H x W in [0, 1]) and, with a recorder, the concept map of its generation."""
    capture = (
        capture_cross_attention(pipe.unet, recorder) if recorder is not None else nullcontext()
    )
    with capture:
        output = pipe(prompt, generator=generator, output_type="pt", **call_options)
    image = output.images[0].detach().float().cpu().clamp(0, 1)
    return image, recorder.concept_map() if recorder is not None else None
