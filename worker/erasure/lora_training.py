"""Stage 2 of MACE: one LoRA per concept group, trained to suppress the phrase's attention.

A rank-r LoRA on `to_k`/`to_v` of every cross-attention layer is trained so that, inside the
concept's mask, the image attends neither to the phrase's tokens nor to the end and padding
tokens (which carry the whole prompt's meaning); `suppress_end_tokens=False` leaves the end and
padding tokens out, for models whose end tokens are alike in every prompt. Several groups train
in one pass of the frozen UNet, each sample through its own group's factors, each group exactly as
if trained alone (`routed_lora`, `concept_optimizer`, `training_plan`). The result is kept as plain
(up, down) factors per matrix, and the UNet is returned to exactly its state before training.
Files are read and written by `lora_files`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .attention_capture import capture_cross_attention, pixel_grid
from .cfis import timestep_sampler
from .concept_optimizer import ConceptAdamW
from .concepts import ConceptGroup, check_weight
from .errors import ErasureCancelled, ErasureInputError
from .lora_files import Factors, save_lora_factors
from .precision import autocast, autocast_dtype
from .routed_lora import RoutedLoraBank, routed_lora
from .timing import StageClock
from .training_data import TrainingSet
from .training_plan import TrainingPlan, encode_training_latents

__all__ = ["encode_training_latents"]  # re-exported: callers read latents as training does


@dataclass(frozen=True)
class LoraOptions:
    """How one group's LoRA is trained (defaults: the spec's person/style settings)."""

    rank: int = 1
    learning_rate: float = 1e-4
    steps: int = 50
    cfis: bool = True
    batch_size: int = 1
    gamma: float = 0.05
    t1: float = 200
    t2: float = 400
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    suppress_end_tokens: bool = True  # the spec's S: the phrase's tokens, EOS and padding

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ErasureInputError(f"LoRA {name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.suppress_end_tokens, bool):
            raise ErasureInputError(
                f"suppress_end_tokens must be true or false, got {self.suppress_end_tokens!r}"
            )
        check_weight("learning_rate", self.learning_rate, allow_zero=False)
        check_weight("grad_clip", self.grad_clip, allow_zero=False)
        check_weight("weight_decay", self.weight_decay)
        timestep_sampler(self.cfis, gamma=self.gamma, t1=self.t1, t2=self.t2)  # validates

    @classmethod
    def for_group(cls, group: ConceptGroup, **overrides) -> LoraOptions:
        """The kind's defaults (learning rate, steps, CFIS), with `overrides` on top."""
        defaults = group.defaults
        values = {
            "learning_rate": defaults.lora_lr,
            "steps": defaults.lora_steps,
            "cfis": defaults.cfis,
        }
        return cls(**(values | overrides))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ConceptLora:
    """One group's trained LoRA as factors: `factors[name] = (up, down)`, float32 on the CPU,
    with peft's alpha/r scaling folded into `up`; `losses[i]` is the loss of step i."""

    group: ConceptGroup
    group_index: int
    factors: Factors
    losses: list[float]
    options: LoraOptions
    seed: int

    def delta(self, name: str) -> torch.Tensor:
        """The dense weight change of matrix `name`."""
        up, down = self.factors[name]
        return up @ down


@dataclass(frozen=True)
class LoraJob:
    """One group's LoRA to train: its group, its position in the request, its images, options."""

    group: ConceptGroup
    group_index: int
    training_set: TrainingSet
    options: LoraOptions


def train_concept_lora(
    pipe,
    group: ConceptGroup,
    group_index: int,
    training_set: TrainingSet,
    options: LoraOptions,
    *,
    seed: int,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ConceptLora:
    """Train one group's LoRA on the pipeline's current UNet (`train_concept_loras` of one job).

    Args:
        pipe: a diffusers `StableDiffusionPipeline` without LoRA adapters loaded.
        group: the concept group being erased.
        group_index: the group's position in the request (part of the seed).
        training_set: the group's images and masks (`generate_training_set`).
        options: rank, learning rate, steps and the rest.
        seed: the run's seed.
        precision: the frozen UNet's compute type (`precision.TRAINING_PRECISIONS`).
        progress: called as `progress(done, total)` after each step.
        should_cancel: polled before each step; a true result raises `ErasureCancelled`.
    """
    job = LoraJob(group, group_index, training_set, options)
    return train_concept_loras(
        pipe, [job], seed=seed, precision=precision, progress=progress, should_cancel=should_cancel
    )[0]


def train_concept_loras(
    pipe,
    jobs: Sequence[LoraJob],
    *,
    seed: int,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    timings: dict[str, float] | None = None,
) -> list[ConceptLora]:
    """Train several groups' LoRAs in shared UNet passes; each comes out as if trained alone.

    Every step runs the frozen UNet once on the samples of all groups still training, each
    sample through its own group's factors (`routed_lora`); each group keeps its own random
    streams (seeded by (seed, group index)), learning rate, gradient clip, Adam state and number
    of steps. The UNet's weights are never changed.

    Args:
        pipe: a diffusers `StableDiffusionPipeline` without LoRA adapters loaded.
        jobs: the groups to train, all with the same LoRA rank.
        seed: the run's seed.
        precision: the frozen UNet's compute type (`precision.TRAINING_PRECISIONS`).
        progress: called as `progress(done, total)` after each step of the pass.
        should_cancel: polled before each step; a true result raises `ErasureCancelled`.
        timings: if given, seconds of setup (latents, prompts, draws) and of the steps are
            added under "lora_setup" and "lora_steps".
    """
    from diffusers import DDPMScheduler

    _check_jobs(pipe.unet, jobs)
    unet = pipe.unet
    clock = StageClock(unet.device, timings)
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    generators = [_generator(seed, job.group_index, 0) for job in jobs]
    samplers = [_sampler(job.options, schedule) for job in jobs]
    plan = TrainingPlan(pipe, jobs, generators, samplers, schedule)
    bank = RoutedLoraBank(unet, len(jobs), jobs[0].options.rank)
    for slot, job in enumerate(jobs):
        bank.initialise(slot, _generator(seed, job.group_index, 1))
    optimizer = ConceptAdamW(
        bank.parameters(),
        learning_rates=[job.options.learning_rate for job in jobs],
        weight_decays=[job.options.weight_decay for job in jobs],
        max_grad_norms=[job.options.grad_clip for job in jobs],
    )
    compute_dtype = autocast_dtype(precision, unet.device)
    total = len(plan.bounds)
    step_losses = []
    clock.lap("lora_setup")
    with routed_lora(unet, bank):
        for step in range(total):
            if should_cancel is not None and should_cancel():
                names = ", ".join(repr(job.group.name) for job in jobs)
                raise ErasureCancelled(f"cancelled while training the LoRAs of {names}")
            batch = plan.batch(step)
            bank.route = batch.route
            with torch.enable_grad():
                with autocast(unet.device, compute_dtype):
                    per_sample = _step_losses(unet, plan, batch)
                per_concept = torch.zeros(len(jobs), device=per_sample.device).index_add(
                    0, batch.route, per_sample * batch.sample_weights
                )
                optimizer.zero_grad()
                per_concept.sum().backward()
            optimizer.step(plan.active[step])
            step_losses.append(per_concept.detach())
            if progress is not None:
                progress(step + 1, total)
    losses = torch.stack(step_losses).cpu()
    clock.lap("lora_steps")
    return [
        ConceptLora(
            job.group,
            job.group_index,
            bank.factors(slot),
            losses[: job.options.steps, slot].tolist(),
            job.options,
            seed,
        )
        for slot, job in enumerate(jobs)
    ]


def _step_losses(unet, plan: TrainingPlan, batch) -> torch.Tensor:
    """Each sample's suppression loss for one step (no host synchronisation)."""
    with capture_cross_attention(unet, keep_graph=True) as store:
        unet(batch.noisy, batch.timesteps, encoder_hidden_states=batch.embeds, return_dict=False)
        return per_sample_suppression_loss(
            store.last(),
            lambda pixels: plan.masks_at(plan.grid_of(pixels), batch.images),
            batch.token_weights,
        )


def _check_jobs(unet, jobs: Sequence[LoraJob]) -> None:
    if not jobs:
        raise ErasureInputError("no LoRAs to train")
    if len({job.options.rank for job in jobs}) != 1:
        raise ErasureInputError("LoRAs trained in one pass must share their rank")
    for job in jobs:
        if len(job.training_set) == 0:
            raise ErasureInputError(f"no training images for {job.group.name!r}")
    if getattr(unet, "peft_config", None):
        raise ErasureInputError(
            "the UNet already carries LoRA adapters; fuse or unload them before stage 2"
        )


def _sampler(options: LoraOptions, schedule):
    return timestep_sampler(
        options.cfis,
        gamma=options.gamma,
        t1=options.t1,
        t2=options.t2,
        num_train_timesteps=schedule.config.num_train_timesteps,
    )


def attention_suppression_loss(
    maps: dict[str, torch.Tensor],
    masks: torch.Tensor,
    token_sets: Sequence[Sequence[int]],
    latent_size: tuple[int, int],
) -> torch.Tensor:
    """MACE's loss: sum over layers of ||A_l[:, mask_l, S]||_F, averaged over the batch.

    Averaging over the batch (rather than summing) keeps the step size independent of the batch
    size; with one image it is the spec's loss.

    Args:
        maps: per layer, attention probabilities (batch, heads, pixels, tokens).
        masks: (batch, H, W) bool image masks; each is resized (nearest) to every layer's grid.
        token_sets: per batch entry, the suppressed token positions S.
        latent_size: (height, width) of the latent the UNet ran on.
    """
    device = next(iter(maps.values())).device
    tokens = next(iter(maps.values())).shape[-1]
    weights = torch.zeros(len(token_sets), tokens, device=device)
    for row, positions in enumerate(token_sets):
        weights[row, list(positions)] = 1.0

    def masks_at(pixels: int) -> torch.Tensor:
        grid = pixel_grid(pixels, latent_size)
        resized = F.interpolate(masks[:, None].float(), size=grid, mode="nearest") > 0.5
        return resized.flatten(1).float().to(device)

    return per_sample_suppression_loss(maps, masks_at, weights).mean()


def per_sample_suppression_loss(
    maps: dict[str, torch.Tensor],
    masks_at: Callable[[int], torch.Tensor],
    token_weights: torch.Tensor,
) -> torch.Tensor:
    """Per batch entry b, sum over layers of ||A_l[b, :, mask_l, S_b]||_F, as a (batch,) tensor.

    Masks and token sets enter as 0/1 weights rather than as indices, so nothing waits for the
    device to say how many pixels a mask holds.

    Args:
        maps: per layer, attention probabilities (batch, heads, pixels, tokens).
        masks_at: the (batch, pixels) 0/1 masks for a layer with that many pixels.
        token_weights: (batch, tokens): 1 on the suppressed positions S_b.
    """
    total = 0.0
    for probabilities in maps.values():
        inside = masks_at(probabilities.shape[2])[:, None, :, None]
        weighted = probabilities.float() * (inside * token_weights[:, None, None, :])
        total = total + torch.linalg.vector_norm(weighted.flatten(1), dim=1)
    return total


def _generator(seed: int, group_index: int, stream: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(_stream_seed(seed, group_index, stream))


def _stream_seed(seed: int, group_index: int, stream: int) -> int:
    """A seed for one of the training's random streams; the spawn key keeps these apart from the
    training images' seeds (`training_data.image_seed`)."""
    sequence = np.random.SeedSequence([seed, group_index], spawn_key=(2, stream))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def save_concept_lora(lora: ConceptLora, directory: str | Path) -> Path:
    """Write the group's LoRA as `pytorch_lora_weights.safetensors` in diffusers' layout."""
    return save_lora_factors(lora.factors, directory)
