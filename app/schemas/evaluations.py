"""Evaluation requests and jobs. Metric configs are checked for their shape here and in full by
the worker's metric classes (worker/evaluation/metrics.py); nothing in them may name a path."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from .common import Seed
from .erasures import JobPublic
from .text import Identifier, Name, Phrase

METRIC_NAMES = ("nudenet", "clip_score", "clip_accuracy", "fid", "ua_ira", "image_grid")
MAX_MODELS = 4
MAX_METRICS = 8
MAX_INLINE_PROMPTS = 500
# Config keys that would name a file on the server; models come from the server's own cache.
PATH_KEYS = ("path", "dir", "file", "folder")

MetricName = Literal["nudenet", "clip_score", "clip_accuracy", "fid", "ua_ira", "image_grid"]


class MetricSpec(BaseModel):
    """One metric and its options (see `mace evaluate --help` for each metric's config)."""

    model_config = ConfigDict(extra="forbid")

    name: MetricName
    config: dict = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _no_paths(cls, config: dict) -> dict:
        for key in _keys(config):
            if any(part in key.lower() for part in PATH_KEYS):
                raise ValueError(
                    f"config key {key!r} would name a file on the server; reference an uploaded "
                    "prompt set by its name in prompt_sets instead, and models by their name"
                )
        return config


class SamplerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_inference_steps: Annotated[int, Field(strict=True, ge=1, le=200)] = 25
    guidance_scale: Annotated[float, Field(ge=0, le=50, allow_inf_nan=False)] = 7.5
    width: Annotated[int, Field(strict=True, ge=8, le=2048, multiple_of=8)] | None = None
    height: Annotated[int, Field(strict=True, ge=8, le=2048, multiple_of=8)] | None = None
    images_per_prompt: Annotated[int, Field(strict=True, ge=1, le=16)] = 1
    batch_size: Annotated[int, Field(strict=True, ge=1, le=64)] = 4


InlinePrompts = Annotated[list[Phrase], Field(min_length=1, max_length=MAX_INLINE_PROMPTS)]
PromptSetRef = Identifier | InlinePrompts


class EvaluationCreate(BaseModel):
    """`models`: erased-model ids and/or registered base-model names, all of one base model.
    `prompt_sets`: name -> an uploaded prompt set's id, or the prompts inline; metric configs
    refer to these names (`prompts`, `target_prompts`, ...), and a set named `default` (or the
    only one) serves metrics that name none."""

    model_config = ConfigDict(extra="forbid")

    models: list[Name] = Field(min_length=1, max_length=MAX_MODELS)
    compare_with_base: StrictBool = True
    metrics: list[MetricSpec] = Field(min_length=1, max_length=MAX_METRICS)
    prompt_sets: dict[Identifier, PromptSetRef] = Field(default_factory=dict, max_length=8)
    sampler: SamplerIn = Field(default_factory=SamplerIn)
    seed: Seed = 0

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError("each model at most once")
        return models

    def normalised(self) -> dict:
        """The request as stored on the job (models resolved later, by the catalog)."""
        return {
            "models": list(self.models),
            "compare_with_base": self.compare_with_base,
            "metrics": [m.model_dump() for m in self.metrics],
            "prompt_sets": {k: v for k, v in sorted(self.prompt_sets.items())},
            "sampler": self.sampler.model_dump(),
            "seed": self.seed,
        }


def _keys(value) -> list[str]:
    """Every key of a nested config."""
    if isinstance(value, dict):
        return [k for key, item in value.items() for k in (str(key), *_keys(item))]
    if isinstance(value, list):
        return [k for item in value for k in _keys(item)]
    return []


class EvaluationJobPublic(JobPublic):
    """An evaluation job; `report` holds each metric's value per model once it succeeded, and
    `artifacts` the stored report files (report.json, report.html, grids)."""

    report: dict | None
    artifacts: dict


class EvaluationJobsPublic(BaseModel):
    data: list[EvaluationJobPublic]
    count: int
