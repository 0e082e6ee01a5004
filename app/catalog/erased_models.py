"""Erased models as the API reads them: with lineage, artifacts and metrics, and whether they
are ready to generate with."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.errors import Conflict, NotFound

from .models import Artifact, ErasedModel, ErasureJob

_WITH_DETAILS = (
    selectinload(ErasedModel.base_model),
    selectinload(ErasedModel.artifacts),
    selectinload(ErasedModel.metrics),
)


def list_models(db: Session, *, offset: int = 0, limit: int = 50) -> tuple[list[ErasedModel], int]:
    """A page of erased models, newest first, and how many there are in all."""
    page = (
        select(ErasedModel)
        .options(*_WITH_DETAILS)
        .order_by(ErasedModel.created_at.desc(), ErasedModel.id)
        .offset(offset)
        .limit(limit)
    )
    count = db.scalar(select(func.count()).select_from(ErasedModel)) or 0
    return list(db.scalars(page)), count


def get_model(db: Session, model_id: str) -> ErasedModel:
    """The erased model `model_id` with its details; raises NotFound."""
    model = db.scalar(select(ErasedModel).where(ErasedModel.id == model_id).options(*_WITH_DETAILS))
    if model is None:
        raise NotFound(f"no erased model {model_id}")
    return model


def get_artifact(db: Session, model_id: str, kind: str) -> Artifact | None:
    """The model's artifact of `kind`, if stored."""
    return db.scalar(select(Artifact).where(Artifact.model_id == model_id, Artifact.kind == kind))


def finished_model(db: Session, model_or_job_id: str) -> ErasedModel:
    """An erased model whose erasure succeeded, by its id or by its job's id.

    Raises:
        NotFound: neither a model nor a job has that id.
        Conflict: the erasure is still queued or running, or it did not succeed.
    """
    model = db.get(ErasedModel, model_or_job_id)
    job = db.get(ErasureJob, model.job_id if model else model_or_job_id)
    if model is None and job is None:
        raise NotFound(f"no erased model {model_or_job_id}")
    if job is None or job.status != "succeeded":
        status = job.status if job else "missing"
        still = status in ("queued", "running")
        raise Conflict(
            f"erasure job {job.id if job else model_or_job_id} is {status}: "
            + (
                "the model is still being erased; try again when the job has succeeded"
                if still
                else "it produced no usable model"
            )
        )
    if model is None and job.model_id is None:
        raise Conflict(f"erasure job {job.id} succeeded but recorded no model")
    return model or get_model(db, job.model_id)
