"""What an erasure job's catalog row stands for, as engine inputs: its request (with the prompts
of a prompt set it names) and the edit of the model it continues, if any. Shared by the job's
own run and the workers that train chunks of it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts import object_key
from app.catalog.db import session_factory
from app.catalog.models import Artifact, BaseModel, ErasedModel, ErasureJob, PromptSet
from worker import runtime
from worker.erasure.base_model import ModelIdentity
from worker.erasure.edit import CompactEdit
from worker.erasure.errors import ErasureInputError
from worker.job_request import ErasureRequest, parse_request


def job_request(db: Session, job: ErasureJob) -> ErasureRequest:
    """The job's request as engine inputs; raises `ErasureInputError`."""
    return parse_request(job.request, prompt_set=lambda id_: _prompts(db, id_))


def identity_of(base: BaseModel) -> ModelIdentity:
    return ModelIdentity(name=base.name, sha256=base.sha256)


def parent_edit(store, job: ErasureJob) -> CompactEdit | None:
    """The edit of the erased model the job continues, or None; raises `ErasureInputError` when
    that model is gone or was made from another base."""
    parent_id = job.parent_model_id
    if not parent_id:
        return None
    with session_factory()() as db:
        parent = db.get(ErasedModel, parent_id)
        edit = db.scalar(
            select(Artifact).where(Artifact.model_id == parent_id, Artifact.kind == "edit")
        )
    if parent is None or edit is None:
        raise ErasureInputError(f"parent model {parent_id} does not exist or has no edit")
    if parent.base_model_id != job.base_model_id:
        raise ErasureInputError(
            f"parent model {parent_id} was made from another base model; use its base"
        )
    return runtime.edits().get(object_key(store, edit.uri), edit.sha256)


def _prompts(db: Session, prompt_set_id: str) -> list[str]:
    prompt_set = db.get(PromptSet, prompt_set_id)
    if prompt_set is None:
        raise ErasureInputError(f"no prompt set {prompt_set_id}")
    return list(prompt_set.prompts)
