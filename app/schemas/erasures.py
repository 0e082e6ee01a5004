"""Erasure requests and jobs. The checks mirror the engine's (worker/erasure/options.py and
concepts.py) so a bad request is refused with a 422 here instead of failing on a worker."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from app.settings import get_settings

from .common import Count, PositiveWeight, Seed, Weight
from .text import Identifier, Name, OptionalPhrase, Phrase

Kind = Literal["object", "person", "style", "explicit"]
Stage = Literal["cfr", "lora", "fusion"]
MaskProvider = Literal["attention", "full", "grounded-sam"]
PreservationTokens = Literal["all", "words"]
TrainingPrecision = Literal["auto", "bf16", "fp16", "off"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STAGES: tuple[str, ...] = ("cfr", "lora", "fusion")

# Engine options stored under request["options"], named as the engine's ErasureOptions fields.
OPTION_FIELDS = (
    "cfr_lambda",
    "preservation_weight",
    "fusion_lambda",
    "fusion_preservation_weight",
    "lora_rank",
    "lora_learning_rate",
    "lora_steps",
    "lora_batch_size",
    "cfis",
    "images_per_concept",
    "image_steps",
    "guidance_scale",
    "mask_provider",
)
# Options added later, stored only when they differ from their default so that requests made
# without them keep the sha256 they had before the option existed.
LATER_OPTION_DEFAULTS = {
    "lora_suppress_end_tokens": True,
    "preservation_tokens": "all",
    "training_precision": "auto",
}


class ConceptGroupIn(BaseModel):
    """One concept to erase: the phrase and its synonyms, its kind and what it is mapped to."""

    model_config = ConfigDict(extra="forbid")

    targets: list[Phrase] = Field(description="the phrase and its synonyms, erased together")
    kind: Kind = "object"
    anchor: OptionalPhrase | None = Field(
        default=None, description="what the concept is mapped to; default by kind"
    )
    templates: list[Phrase] | None = Field(
        default=None,
        description='prompt templates with "{}" where the phrase goes, for models with their own '
        "prompt language; default: the kind's templates",
    )

    @field_validator("templates")
    @classmethod
    def _templates(cls, templates: list[str] | None) -> list[str] | None:
        if templates is None:
            return None
        limit = get_settings().MAX_TEMPLATES_PER_GROUP
        if not templates or len(templates) > limit:
            raise ValueError(f"give 1 to {limit} templates, or leave the field out")
        for template in templates:
            if template.count("{}") != 1:
                raise ValueError(f'each template must hold "{{}}" exactly once: {template!r}')
        return templates

    def stored(self) -> dict:
        """The group as stored on the job; `templates` only when given, so requests made
        without it keep the sha256 they had before the field existed."""
        record = self.model_dump()
        if record["templates"] is None:
            del record["templates"]
        return record

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        limit = get_settings().MAX_TARGETS_PER_GROUP
        if not targets:
            raise ValueError("a concept group needs at least one non-empty target phrase")
        if len(targets) > limit:
            raise ValueError(f"at most {limit} target phrases per group, got {len(targets)}")
        if len({t.lower() for t in targets}) != len(targets):
            raise ValueError(f"duplicate target phrases in {targets}")
        return targets


class ErasureCreate(BaseModel):
    """An erasure request; options left out take the concept kinds' defaults in the engine."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "base_model": "sd-1.5",
                    "concepts": ["van gogh", {"targets": ["nudity", "naked"], "kind": "explicit"}],
                    "seed": 0,
                }
            ]
        },
    )

    base_model: Name = Field(
        description="a registered base model's name, or an erased model's id to erase more from"
    )
    concepts: list[ConceptGroupIn] = Field(
        description='groups, or strings as shorthand: "nudity, naked" is one group of synonyms'
    )
    preservation_prompt_set: Identifier | None = Field(
        default=None, description="id of an uploaded prompt set (default: the shipped captions)"
    )
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    cfr_lambda: Weight | None = None
    preservation_weight: Weight | None = None
    fusion_lambda: Weight = 0.1
    fusion_preservation_weight: Weight | None = None
    preservation_tokens: PreservationTokens = Field(
        default="all",
        description="positions of each preservation prompt that count: all (the paper's, "
        "padding included) or words (the prompt's own tokens and its end token)",
    )
    lora_rank: Count = 1
    lora_learning_rate: PositiveWeight | None = None
    lora_steps: Count | None = None
    lora_batch_size: Count = 1
    lora_suppress_end_tokens: StrictBool = Field(
        default=True,
        description="the LoRA loss also suppresses the end and padding tokens, as in the paper; "
        "false: only the phrase's own tokens",
    )
    cfis: StrictBool | None = None
    training_precision: TrainingPrecision = Field(
        default="auto",
        description="the frozen UNet's type while the LoRAs train (they stay float32): auto "
        "(bf16 on GPUs that have it, else fp16), bf16, fp16, or off (the model's own type)",
    )
    images_per_concept: Count = 8
    image_steps: Count = 30
    guidance_scale: Weight = 7.5
    mask_provider: MaskProvider = "attention"
    seed: Seed = 0
    name: Name | None = None
    tags: list[Name] = Field(default_factory=list)

    @field_validator("concepts", mode="before")
    @classmethod
    def _shorthand(cls, value):
        if not isinstance(value, list):
            return value
        return [{"targets": _synonyms(item)} if isinstance(item, str) else item for item in value]

    @field_validator("concepts")
    @classmethod
    def _group_count(cls, groups: list[ConceptGroupIn]) -> list[ConceptGroupIn]:
        limit = get_settings().MAX_CONCEPT_GROUPS
        if not groups:
            raise ValueError("give at least one concept group to erase")
        if len(groups) > limit:
            raise ValueError(f"at most {limit} concept groups per request, got {len(groups)}")
        return groups

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages: list[str]) -> list[str]:
        if not stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be a non-empty subset of {','.join(STAGES)}")
        if "fusion" in stages and "lora" not in stages:
            raise ValueError("the fusion stage fuses LoRAs: add the lora stage, or drop fusion")
        return [stage for stage in STAGES if stage in stages]

    @field_validator("lora_rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        return _at_most(value, get_settings().MAX_LORA_RANK)

    @field_validator("lora_steps")
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        return None if value is None else _at_most(value, get_settings().MAX_LORA_STEPS)

    @field_validator("images_per_concept", "lora_batch_size")
    @classmethod
    def _images(cls, value: int) -> int:
        return _at_most(value, get_settings().MAX_IMAGES_PER_CONCEPT)

    @field_validator("image_steps")
    @classmethod
    def _image_steps(cls, value: int) -> int:
        return _at_most(value, get_settings().MAX_INFERENCE_STEPS)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        limit = get_settings().MAX_TAGS
        if len(tags) > limit:
            raise ValueError(f"at most {limit} tags, got {len(tags)}")
        return tags

    def _options(self) -> dict:
        options = {name: getattr(self, name) for name in OPTION_FIELDS}
        for name, default in LATER_OPTION_DEFAULTS.items():
            if getattr(self, name) != default:
                options[name] = getattr(self, name)
        return options

    def normalised(self) -> dict:
        """The request as stored on the job: groups expanded, kind defaults left as None."""
        return {
            "base_model": self.base_model,
            "concepts": [group.stored() for group in self.concepts],
            "stages": list(self.stages),
            "options": self._options(),
            "preservation_prompt_set": self.preservation_prompt_set,
            "seed": self.seed,
            "name": self.name,
            "tags": list(self.tags),
        }


def _synonyms(shorthand: str) -> list[str]:
    """ "nudity, naked" -> ["nudity", "naked"]; empty parts are dropped, as the engine does."""
    return [part for part in shorthand.split(",") if part.strip()] or [""]


def _at_most(value: int, limit: int) -> int:
    if value > limit:
        raise ValueError(f"must be at most {limit}, got {value}")
    return value


def request_sha256(request: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a normalised request."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobPublic(BaseModel):
    """What every job shows: status, stage, progress and timings; the row is the truth."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    status: JobStatus
    stage: str | None
    progress: float
    stage_timings: dict
    error: str | None
    attempts: int
    cancel_requested: bool
    dispatched: bool
    request: dict
    request_sha256: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class ErasureJobPublic(JobPublic):
    """An erasure job; `model_id` once it succeeded."""

    base_model_id: str
    parent_model_id: str | None
    model_id: str | None


class ErasureJobsPublic(BaseModel):
    data: list[ErasureJobPublic]
    count: int
