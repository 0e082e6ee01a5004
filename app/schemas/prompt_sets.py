"""Prompt sets: preservation prompts for erasures, prompts for evaluations."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from app.settings import get_settings

from .text import Name, Phrase

Purpose = Literal["preservation", "evaluation"]


class PromptSetCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "landscapes", "prompts": ["a lake at dawn", "a forest path"]}]
        },
    )

    name: Name
    prompts: list[Phrase]
    purpose: Purpose = "preservation"

    @field_validator("prompts")
    @classmethod
    def _count(cls, prompts: list[str]) -> list[str]:
        limit = get_settings().MAX_PROMPTS_PER_SET
        if not prompts:
            raise ValueError("a prompt set needs at least one prompt")
        if len(prompts) > limit:
            raise ValueError(f"at most {limit} prompts per set, got {len(prompts)}")
        return prompts


class PromptSetSummary(BaseModel):
    id: str
    name: str
    purpose: str
    count: int
    sha256: str
    created_at: datetime

    @classmethod
    def from_record(cls, record, *, count: int) -> PromptSetSummary:
        """From a `PromptSet` row whose prompts need not be loaded."""
        return cls(
            id=record.id,
            name=record.name,
            purpose=record.purpose,
            count=count,
            sha256=record.sha256,
            created_at=record.created_at,
        )


class PromptSetPublic(PromptSetSummary):
    prompts: list[str]

    @classmethod
    def from_set(cls, record) -> PromptSetPublic:
        """From a `PromptSet` row, prompts included."""
        summary = PromptSetSummary.from_record(record, count=len(record.prompts))
        return cls(**summary.model_dump(), prompts=record.prompts)


class PromptSetsPublic(BaseModel):
    data: list[PromptSetSummary]
    count: int
