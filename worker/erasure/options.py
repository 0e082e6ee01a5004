"""Erasure options: every engine setting, with the concept kinds' defaults filled in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from .concepts import ConceptGroup, check_weight
from .errors import ErasureInputError
from .precision import check_training_precision

STAGES = ("cfr", "lora", "fusion")
# Positions of each preservation prompt that P counts (see statistics.prompt_second_moment).
PRESERVATION_TOKENS = ("all", "words")


@dataclass(frozen=True)
class ErasureOptions:
    """Settings of one erasure; `None` means "the concept kind's default" (see concepts.py).

    CFR and fusion solve one least-squares problem over all groups, so their weights are shared:
    where groups of several kinds are mixed, the largest of their defaults is used.
    """

    stages: tuple[str, ...] = STAGES
    cfr_lambda: float | None = None
    preservation_weight: float | None = None
    preservation_prompts: tuple[str, ...] | None = None  # None: the shipped captions
    fusion_lambda: float = 0.1
    fusion_preservation_weight: float | None = None  # None: same as preservation_weight
    preservation_tokens: str = "all"  # "words": each caption's own tokens (statistics.py)
    lora_rank: int = 1
    lora_learning_rate: float | None = None
    lora_steps: int | None = None
    lora_batch_size: int = 1
    lora_suppress_end_tokens: bool = True
    cfis: bool | None = None
    images_per_concept: int = 8
    image_steps: int = 30
    guidance_scale: float = 7.5
    mask_provider: str = "attention"
    seed: int = 0
    # How stage 2 runs, not what it computes (results agree up to float rounding):
    concepts_per_pass: int | None = None  # groups sharing a sampling and training pass; auto
    image_batch_size: int | None = None  # images per sampling call; None: auto
    training_precision: str = "auto"  # the frozen UNet's type in training (precision.py)
    extra: dict = field(default_factory=dict, compare=False)

    def validate(self) -> ErasureOptions:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ErasureInputError(f"stages must be a non-empty subset of {','.join(STAGES)}")
        if "fusion" in self.stages and "lora" not in self.stages:
            raise ErasureInputError(
                "the fusion stage fuses LoRAs: add the lora stage, or drop fusion"
            )
        for name in ("cfr_lambda", "preservation_weight", "fusion_preservation_weight"):
            if getattr(self, name) is not None:
                check_weight(name, getattr(self, name))
        check_weight("fusion_lambda", self.fusion_lambda)
        if self.lora_learning_rate is not None:
            check_weight("lora_learning_rate", self.lora_learning_rate, allow_zero=False)
        check_weight("guidance_scale", self.guidance_scale)
        for name in ("lora_rank", "lora_batch_size", "images_per_concept", "image_steps"):
            _check_count(name, getattr(self, name))
        for name in ("lora_steps", "concepts_per_pass", "image_batch_size"):
            if getattr(self, name) is not None:
                _check_count(name, getattr(self, name))
        check_training_precision(self.training_precision)
        if not isinstance(self.lora_suppress_end_tokens, bool):
            raise ErasureInputError(
                "lora_suppress_end_tokens must be true or false, "
                f"got {self.lora_suppress_end_tokens!r}"
            )
        check_preservation_tokens(self.preservation_tokens)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ErasureInputError(f"seed must be a non-negative integer, got {self.seed!r}")
        from .masks import MASK_PROVIDERS

        if self.mask_provider not in MASK_PROVIDERS:
            raise ErasureInputError(
                f"unknown mask provider {self.mask_provider!r}; "
                f"use one of {', '.join(MASK_PROVIDERS)}"
            )
        return self

    def resolve(self, groups: Sequence[ConceptGroup]) -> ErasureOptions:
        """The options with the shared weights resolved from the groups' kinds."""
        cfr_lambda = self.cfr_lambda
        if cfr_lambda is None:
            cfr_lambda = max(g.defaults.cfr_lambda for g in groups)
        preservation = self.preservation_weight
        if preservation is None:
            preservation = max(g.defaults.preservation_weight for g in groups)
        fusion_preservation = self.fusion_preservation_weight
        if fusion_preservation is None:
            fusion_preservation = preservation
        return replace(
            self,
            cfr_lambda=cfr_lambda,
            preservation_weight=preservation,
            fusion_preservation_weight=fusion_preservation,
        )

    def lora_learning_rate_for(self, group: ConceptGroup) -> float:
        return self.lora_learning_rate or group.defaults.lora_lr

    def lora_steps_for(self, group: ConceptGroup) -> int:
        return self.lora_steps or group.defaults.lora_steps

    def cfis_for(self, group: ConceptGroup) -> bool:
        return group.defaults.cfis if self.cfis is None else self.cfis

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        data["stages"] = list(self.stages)
        if self.preservation_prompts is not None:
            data["preservation_prompts"] = list(self.preservation_prompts)
        return data


def check_preservation_tokens(value) -> None:
    if value not in PRESERVATION_TOKENS:
        raise ErasureInputError(
            f"preservation_tokens must be one of {', '.join(PRESERVATION_TOKENS)}, got {value!r}"
        )


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        shown = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
        raise ErasureInputError(f"{name} must be a whole number >= 1, got {shown}")
