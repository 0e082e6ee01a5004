"""Every random draw of a stage-2 training pass, made up front and moved to the device once.

Each concept draws from its own generator, seeded by (seed, group index), in the order a concept
trained alone always drew: per step its images, its prompts, its timesteps, its noise. So a
concept's samples do not depend on which other concepts share its passes. Drawing everything
before the first step lets the training loop run without host-device synchronisation: a step only
slices tensors that are already on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention_capture import pixel_grid
from .templates import fill
from .training_data import end_token_positions, phrase_token_positions

# Images per VAE call and prompts per text-encoder call while preparing a pass.
VAE_BATCH = 8
PROMPT_BATCH = 256


@dataclass
class StepBatch:
    """The samples of one training step, all on the UNet's device."""

    noisy: torch.Tensor  # (B, C, h, w) in the UNet's dtype
    timesteps: torch.Tensor  # (B,)
    embeds: torch.Tensor  # (B, 77, d) in the UNet's dtype
    token_weights: torch.Tensor  # (B, 77): 1 on the suppressed positions S
    images: torch.Tensor  # (B,) index of each sample's image among the pass's images
    route: torch.Tensor  # (B,) concept slot
    sample_weights: torch.Tensor  # (B,) 1 / the concept's batch size


class PromptTable:
    """The prompts a pass draws, each encoded once (in batches) with its suppressed positions."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str, bool], int] = {}

    def index(self, template: str, phrase: str, end_tokens: bool) -> int:
        return self.keys.setdefault((template, phrase, end_tokens), len(self.keys))

    def encode(self, pipe, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (U, 77, d), token weights (U, 77)) of every prompt, in index order."""
        tokenizer = pipe.tokenizer
        keys = list(self.keys)
        weights = torch.zeros(len(keys), tokenizer.model_max_length)
        for row, (template, phrase, end_tokens) in enumerate(keys):
            positions = phrase_token_positions(tokenizer, template, phrase)
            if end_tokens:
                positions += end_token_positions(tokenizer, fill(template, phrase))
            weights[row, positions] = 1.0
        prompts = [fill(template, phrase) for template, phrase, _ in keys]
        embeddings = []
        with torch.no_grad():  # the text encoder is frozen
            for start in range(0, len(prompts), PROMPT_BATCH):
                chunk = prompts[start : start + PROMPT_BATCH]
                embeddings.append(pipe.encode_prompt(chunk, device, 1, False)[0].to(dtype))
        return torch.cat(embeddings), weights.to(device)


class TrainingPlan:
    """All steps of one pass over `jobs` (each with `training_set`, `options`, `group`,
    `group_index`), drawn with `generators[slot]` and `samplers[slot]`."""

    def __init__(self, pipe, jobs: Sequence, generators, samplers, noise_schedule) -> None:
        unet = pipe.unet
        self.device, self.dtype = unet.device, unet.dtype
        self.steps = [job.options.steps for job in jobs]
        latents, masks, offsets = _pass_latents(pipe, jobs)
        self.latent_size = tuple(latents.shape[-2:])
        self.image_masks = masks.to(self.device)
        self._grids: dict[tuple[int, int], torch.Tensor] = {}
        prompts = PromptTable()
        per_step: list[list[dict]] = [[] for _ in range(max(self.steps))]
        for slot, job in enumerate(jobs):
            for step in range(job.options.steps):
                per_step[step].append(
                    _draw(job, generators[slot], samplers[slot], prompts, latents.shape[1:])
                    | {"slot": slot, "offset": offsets[slot]}
                )
        self.embeddings, self.prompt_weights = prompts.encode(pipe, self.device, self.dtype)
        self._flatten(per_step, latents, noise_schedule)

    def _flatten(self, per_step: list[list[dict]], latents: torch.Tensor, schedule) -> None:
        draws = [draw for step in per_step for draw in step]
        images = torch.cat([draw["picks"] + draw["offset"] for draw in draws])
        timesteps = torch.cat([draw["timesteps"] for draw in draws])
        noise = torch.cat([draw["noise"] for draw in draws])
        clean = latents.index_select(0, images)
        noisy = schedule.add_noise(clean, noise.to(clean.dtype), timesteps)
        sizes = [len(draw["picks"]) for draw in draws]
        self.noisy = noisy.to(self.device, self.dtype)
        self.timesteps = timesteps.to(self.device)
        self.images = images.to(self.device)
        self.prompts = torch.cat([draw["prompts"] for draw in draws]).to(self.device)
        self.route = torch.cat(
            [torch.full((n,), d["slot"]) for n, d in zip(sizes, draws, strict=True)]
        ).to(self.device)
        self.sample_weights = torch.cat([torch.full((n,), 1.0 / n) for n in sizes]).to(self.device)
        bounds, start = [], 0
        for step in per_step:
            count = sum(len(draw["picks"]) for draw in step)
            bounds.append((start, start + count))
            start += count
        self.bounds = bounds
        self.active = [
            torch.tensor([step < n for n in self.steps], device=self.device)
            for step in range(len(bounds))
        ]

    def batch(self, step: int) -> StepBatch:
        start, end = self.bounds[step]
        prompts = self.prompts[start:end]
        return StepBatch(
            noisy=self.noisy[start:end],
            timesteps=self.timesteps[start:end],
            embeds=self.embeddings.index_select(0, prompts),
            token_weights=self.prompt_weights.index_select(0, prompts),
            images=self.images[start:end],
            route=self.route[start:end],
            sample_weights=self.sample_weights[start:end],
        )

    def masks_at(self, grid: tuple[int, int], images: torch.Tensor) -> torch.Tensor:
        """(B, pixels) float masks of `images`, resized (nearest) to a layer's `grid`."""
        if grid not in self._grids:
            resized = F.interpolate(self.image_masks[:, None].float(), size=grid, mode="nearest")
            self._grids[grid] = (resized > 0.5).flatten(1).float()
        return self._grids[grid].index_select(0, images)

    def grid_of(self, pixels: int) -> tuple[int, int]:
        return pixel_grid(pixels, self.latent_size)


def encode_training_latents(vae, images: torch.Tensor, batch_size: int = VAE_BATCH) -> torch.Tensor:
    """VAE latents of images in [0, 1]: pixels mapped to [-1, 1] (what the VAE was trained on),
    the latent distribution's mean (deterministic), times the VAE's scaling factor.

    Args:
        vae: the pipeline's `AutoencoderKL`.
        images: (N, 3, H, W) floats in [0, 1].
        batch_size: images per VAE call (full-size VAE activations are large).
    """
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    encoded = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = images[start : start + batch_size].to(vae.device, vae.dtype) * 2 - 1
            mean = vae.encode(pixels).latent_dist.mean
            encoded.append((mean - shift) * vae.config.scaling_factor)
    return torch.cat(encoded)


def _pass_latents(pipe, jobs) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Float32 latents (on the CPU, where the draws are made) and masks of every job's images,
    concatenated, with each job's offset into them."""
    images = torch.cat([job.training_set.images for job in jobs])
    masks = torch.cat([job.training_set.masks for job in jobs])
    offsets, start = [], 0
    for job in jobs:
        offsets.append(start)
        start += len(job.training_set)
    latents = encode_training_latents(pipe.vae, images).float().cpu()
    return latents, masks, offsets


def _draw(job, generator, sampler, prompts: PromptTable, latent_shape) -> dict:
    """One step's draws for one concept, in the order a concept trained alone draws them."""
    size, group = job.options.batch_size, job.group
    picks = torch.randint(len(job.training_set), (size,), generator=generator)
    keys = []
    for _ in range(size):
        template = group.prompt_templates[
            torch.randint(len(group.prompt_templates), (), generator=generator)
        ]
        phrase = group.targets[torch.randint(len(group.targets), (), generator=generator)]
        keys.append(prompts.index(template, phrase, job.options.suppress_end_tokens))
    timesteps = sampler.sample(size, generator)
    noise = torch.randn((size, *latent_shape), generator=generator)
    return {"picks": picks, "prompts": torch.tensor(keys), "timesteps": timesteps, "noise": noise}
