"""eval-learn experiment configurations sent over HTTP (`POST /experiments`).

The body is eval-learn's own layout. What would name a file on the server is refused or mapped
to the catalog: `model_id` is a registered base model's name, `load_path` an erased model's id,
`save_path` only asks for the erasure to be stored with the report, and a metric's prompts come
from an uploaded prompt set (`prompt_set`) or the worker's local datasets cache."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .common import Seed

EVAL_LEARN_METRICS = ("asr_i2p", "asr", "clip_score", "fid", "ua_ira")
REFUSED_METRIC_KEYS = ("prompts_path", "reference_dir", "inception_path", "target_path")
TECHNIQUE_PATH_KEYS = ("save_path", "load_path")


class TechniqueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["mace"]
    config: dict = Field(default_factory=dict)


class MetricIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    config: dict = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _no_paths(cls, config: dict) -> dict:
        for key in config:
            if key in REFUSED_METRIC_KEYS or key.endswith(("_path", "_dir")):
                raise ValueError(
                    f"{key!r} would name a file on the server; upload the prompts with POST "
                    "/prompt-sets and give its id as 'prompt_set'"
                )
        return config


class ExperimentCreate(BaseModel):
    """eval-learn's experiment configuration: `technique`, and `metric` or `metrics`."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str | None = None  # recorded only: reports are stored with the job
    technique: TechniqueIn
    metric: MetricIn | None = None
    metrics: list[MetricIn] | None = Field(default=None, min_length=1, max_length=8)
    seed: Seed | None = None

    @model_validator(mode="after")
    def _one_metric_field(self) -> ExperimentCreate:
        if (self.metric is None) == (self.metrics is None):
            raise ValueError("give either 'metric' (one) or 'metrics' (a list)")
        return self

    def config(self) -> dict:
        """The configuration as the engine's `run_experiment` reads it."""
        return self.model_dump(exclude_none=True)
