"""Prompt sets: uploaded once, referenced by id from erasure requests and evaluations."""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from app.errors import NotFound
from app.schemas.prompt_sets import PromptSetCreate

from .models import PromptSet


def prompts_sha256(prompts: list[str]) -> str:
    """sha256 of the prompts one per line, as a text file of them would be."""
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def create_prompt_set(db: Session, *, data: PromptSetCreate) -> PromptSet:
    """Store a validated prompt set and commit it."""
    record = PromptSet(
        name=data.name,
        purpose=data.purpose,
        prompts=list(data.prompts),
        sha256=prompts_sha256(data.prompts),
    )
    db.add(record)
    db.commit()
    return record


def get_prompt_set(db: Session, prompt_set_id: str) -> PromptSet:
    """The prompt set `prompt_set_id`; raises NotFound."""
    record = db.get(PromptSet, prompt_set_id)
    if record is None:
        raise NotFound(f"no prompt set {prompt_set_id}")
    return record


def list_prompt_sets(
    db: Session, *, offset: int = 0, limit: int = 50
) -> tuple[list[tuple[PromptSet, int]], int]:
    """A page of prompt sets with their sizes (counted by the database), and the total."""
    size = func.json_array_length(PromptSet.prompts)
    rows = db.execute(
        select(PromptSet, size)
        .options(defer(PromptSet.prompts))
        .order_by(PromptSet.created_at.desc())
        .offset(offset)
        .limit(limit)
    )
    total = db.scalar(select(func.count()).select_from(PromptSet)) or 0
    return [(record, int(count)) for record, count in rows], total
