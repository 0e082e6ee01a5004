"""Base models: registered by an admin from the CLI, never over HTTP."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import BaseModel


class DuplicateBaseModel(ValueError):
    """A base model with that name is already registered."""


def register_base_model(db: Session, *, name: str, source: str, sha256: str) -> BaseModel:
    """Record a base model; its identity (sha256) is computed by the caller.

    Args:
        db: the catalog session; the record is committed.
        name: the name requests use to pick the model; unique.
        source: a server-side pipeline folder or a Hugging Face id in the local cache.
        sha256: the model's content hash (`worker.erasure.base_model.model_identity`).
    """
    record = BaseModel(name=name, source=source, sha256=sha256)
    db.add(record)
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise DuplicateBaseModel(f"a base model named {name!r} is already registered") from exc
    return record


def list_base_models(db: Session) -> list[BaseModel]:
    """Every registered base model, by name."""
    return list(db.scalars(select(BaseModel).order_by(BaseModel.name)))


def base_model_by_name(db: Session, name: str) -> BaseModel | None:
    """The base model registered as `name`, if any."""
    return db.scalar(select(BaseModel).where(BaseModel.name == name))
