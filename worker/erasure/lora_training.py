"""Stage 2 of MACE: one LoRA per concept group, trained to suppress the phrase's attention.

A rank-r LoRA on `to_k`/`to_v` of every cross-attention layer is trained so that, inside the
concept's mask, the image attends neither to the phrase's tokens nor to the end and padding
tokens (which carry the whole prompt's meaning); `suppress_end_tokens=False` leaves the end and
padding tokens out, for models whose end tokens are alike in every prompt. The result is kept as
plain (up, down) factors per matrix, and the UNet is returned to exactly its state before
training. Files are read and written by `lora_files`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attention_capture import capture_cross_attention, pixel_grid
from .cfis import timestep_sampler
from .concepts import ConceptGroup, check_weight
from .errors import ErasureCancelled, ErasureInputError
from .layers import cross_attention_projections
from .lora_files import Factors, save_lora_factors
from .templates import fill
from .training_data import TrainingSet, end_token_positions, phrase_token_positions

logger = logging.getLogger(__name__)

ADAPTER_NAME = "mace_stage2"


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


def train_concept_lora(
    pipe,
    group: ConceptGroup,
    group_index: int,
    training_set: TrainingSet,
    options: LoraOptions,
    *,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ConceptLora:
    """Train the group's LoRA on the pipeline's current UNet (after stage 1, in a full run).

    Every random draw (LoRA init, images, templates, phrases, timesteps, noise) comes from
    generators seeded by (seed, group_index). The UNet's weights are never changed.

    Args:
        pipe: a diffusers `StableDiffusionPipeline` without LoRA adapters loaded.
        group: the concept group being erased.
        group_index: the group's position in the request (part of the seed).
        training_set: the group's images and masks (`generate_training_set`).
        options: rank, learning rate, steps and the rest.
        seed: the run's seed.
        progress: called as `progress(done, total)` after each step.
        should_cancel: polled before each step; a true result raises `ErasureCancelled`.
    """
    from diffusers import DDPMScheduler

    if len(training_set) == 0:
        raise ErasureInputError(f"no training images for {group.name!r}")
    unet = pipe.unet
    latents = encode_training_latents(pipe.vae, training_set.images).to(unet.device, unet.dtype)
    prompts = _PromptBank(pipe, group, suppress_end_tokens=options.suppress_end_tokens)
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    timesteps = timestep_sampler(
        options.cfis,
        gamma=options.gamma,
        t1=options.t1,
        t2=options.t2,
        num_train_timesteps=noise_schedule.config.num_train_timesteps,
    )
    generator = torch.Generator("cpu").manual_seed(_stream_seed(seed, group_index, 0))
    losses: list[float] = []

    def batch_loss(size: int, generator: torch.Generator) -> torch.Tensor:
        picks = torch.randint(len(training_set), (size,), generator=generator)
        prompt_embeds, token_sets = prompts.draw(size, generator)
        t = timesteps.sample(size, generator).to(unet.device)
        noise = torch.randn(latents[picks].shape, generator=generator).to(latents)
        noisy = noise_schedule.add_noise(latents[picks], noise, t)
        with torch.enable_grad(), capture_cross_attention(unet, keep_graph=True) as store:
            unet(noisy, t, encoder_hidden_states=prompt_embeds, return_dict=False)
            maps = store.last()
            return attention_suppression_loss(
                maps, training_set.masks[picks], token_sets, tuple(latents.shape[-2:])
            )

    with _trainable_lora(unet, options.rank, seed=_stream_seed(seed, group_index, 1)) as params:
        optimizer = torch.optim.AdamW(
            params, lr=options.learning_rate, weight_decay=options.weight_decay
        )
        for step in range(options.steps):
            if should_cancel is not None and should_cancel():
                raise ErasureCancelled(f"cancelled while training the LoRA of {group.name!r}")
            loss = batch_loss(options.batch_size, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            if progress is not None:
                progress(step + 1, options.steps)
        factors = _adapter_factors(unet)
    return ConceptLora(group, group_index, factors, losses, options, seed)


def encode_training_latents(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """VAE latents of images in [0, 1]: pixels mapped to [-1, 1] (what the VAE was trained on),
    the latent distribution's mean (deterministic), times the VAE's scaling factor.

    Args:
        vae: the pipeline's `AutoencoderKL`.
        images: (N, 3, H, W) floats in [0, 1].
    """
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    encoded = []
    with torch.no_grad():
        for image in images:  # one at a time: full-size VAE activations are large
            pixels = image[None].to(vae.device, vae.dtype) * 2 - 1
            mean = vae.encode(pixels).latent_dist.mean
            encoded.append((mean - shift) * vae.config.scaling_factor)
    return torch.cat(encoded)


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
    total = 0.0
    for probabilities in maps.values():
        grid = pixel_grid(probabilities.shape[2], latent_size)
        layer_masks = F.interpolate(masks[:, None].float(), size=grid, mode="nearest") > 0.5
        layer_masks = layer_masks.flatten(1).to(probabilities.device)
        for index, tokens in enumerate(token_sets):
            inside = probabilities[index][:, layer_masks[index]]
            total = total + torch.linalg.vector_norm(inside[..., list(tokens)].float())
    return total / len(token_sets)


def _stream_seed(seed: int, group_index: int, stream: int) -> int:
    """A seed for one of the training's random streams; the spawn key keeps these apart from the
    training images' seeds (`training_data.image_seed`)."""
    sequence = np.random.SeedSequence([seed, group_index], spawn_key=(2, stream))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


class _PromptBank:
    """Template prompts with a target phrase: cached text embeddings and suppressed positions."""

    def __init__(self, pipe, group: ConceptGroup, *, suppress_end_tokens: bool) -> None:
        self.pipe, self.group = pipe, group
        self.suppress_end_tokens = suppress_end_tokens
        self.templates = group.prompt_templates
        self.cache: dict[tuple[str, str], tuple[torch.Tensor, list[int]]] = {}

    def get(self, template: str, phrase: str) -> tuple[torch.Tensor, list[int]]:
        key = (template, phrase)
        if key not in self.cache:
            prompt = fill(template, phrase)
            tokenizer = self.pipe.tokenizer
            tokens = phrase_token_positions(tokenizer, template, phrase)
            if self.suppress_end_tokens:
                tokens += end_token_positions(tokenizer, prompt)
            with torch.no_grad():  # the text encoder is frozen: encode each prompt once
                embeds = self.pipe.encode_prompt(prompt, self.pipe.unet.device, 1, False)[0]
            self.cache[key] = (embeds[0].to(self.pipe.unet.dtype), tokens)
        return self.cache[key]

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[list[int]]]:
        """`n` random (template, phrase) prompts: embeddings (n, 77, d) and token sets."""
        drawn = []
        for _ in range(n):
            template = self.templates[torch.randint(len(self.templates), (), generator=generator)]
            phrase = self.group.targets[
                torch.randint(len(self.group.targets), (), generator=generator)
            ]
            drawn.append(self.get(template, phrase))
        return torch.stack([e for e, _ in drawn]), [tokens for _, tokens in drawn]


@contextmanager
def _trainable_lora(unet: nn.Module, rank: int, *, seed: int) -> Iterator[list[nn.Parameter]]:
    """Attach a fresh LoRA to every cross-attention to_k/to_v, with only its parameters
    trainable; on exit remove it and restore the UNet's modules and requires_grad flags."""
    from peft import LoraConfig

    if getattr(unet, "peft_config", None):
        raise ErasureInputError(
            "the UNet already carries LoRA adapters; fuse or unload them before stage 2"
        )
    targets = list(cross_attention_projections(unet))
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=targets)
    try:
        with torch.random.fork_rng():  # peft draws the kaiming init from torch's RNG
            torch.manual_seed(seed)
            unet.add_adapter(config, adapter_name=ADAPTER_NAME)
        params = []
        for name, param in unet.named_parameters():
            is_lora = f".{ADAPTER_NAME}." in name and ".lora_" in name
            if is_lora:
                # float32 factors even on a float16 UNet: Adam updates need the precision.
                param.data = param.data.float()
            param.requires_grad_(is_lora)
            if is_lora:
                params.append(param)
        yield params
    finally:
        if getattr(unet, "peft_config", None):
            unet.unload_lora()
        for name, param in unet.named_parameters():
            param.requires_grad_(flags[name])


def _adapter_factors(unet: nn.Module) -> Factors:
    factors = {}
    for name, layer in cross_attention_projections(unet).items():
        down = layer.lora_A[ADAPTER_NAME].weight.detach().float().cpu().clone()
        up = layer.lora_B[ADAPTER_NAME].weight.detach().float().cpu()
        factors[name] = (up * layer.scaling[ADAPTER_NAME], down)
    return factors


def save_concept_lora(lora: ConceptLora, directory: str | Path) -> Path:
    """Write the group's LoRA as `pytorch_lora_weights.safetensors` in diffusers' layout."""
    return save_lora_factors(lora.factors, directory)
