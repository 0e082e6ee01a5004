"""Erasure jobs from the API's side: idempotent submission, listing, reading, cancelling.

Dispatch to the broker is not done here: it happens after the commit (`app.dispatch`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidField
from app.schemas.erasures import ErasureCreate, request_sha256

from . import jobs
from .base_models import base_model_by_name, list_base_models
from .models import ErasedModel, ErasureJob, PromptSet
from .submissions import Submission, commit_new_job, earlier_submission, scoped_key


def submit_erasure(
    db: Session, *, request: ErasureCreate, api_key_id: str, idempotency_key: str | None = None
) -> Submission:
    """Insert a queued job for `request` and commit it, or return the job of an earlier
    submission with the same idempotency key and the same request.

    Args:
        db: the catalog session.
        request: the validated request.
        api_key_id: the submitting key; idempotency keys are scoped to it.
        idempotency_key: the client's `Idempotency-Key` header, if any.

    Raises:
        Conflict: the idempotency key was used for another request, or the erased model to
            continue from comes from a job that did not succeed.
        InvalidField: the base model or prompt set does not exist.
    """
    normalised = request.normalised()
    digest = request_sha256(normalised)
    key = scoped_key(api_key_id, idempotency_key)
    if earlier := earlier_submission(db, ErasureJob, key, digest, idempotency_key):
        return earlier
    base_model_id, parent_model_id = _resolve_base(db, request.base_model)
    prompt_set = request.preservation_prompt_set
    if prompt_set is not None and db.get(PromptSet, prompt_set) is None:
        raise InvalidField(
            ["body", "preservation_prompt_set"],
            f"no prompt set {prompt_set!r}; upload one with POST /prompt-sets",
        )
    job = ErasureJob(
        status="queued",
        dispatched=False,
        base_model_id=base_model_id,
        parent_model_id=parent_model_id,
        request=normalised,
        request_sha256=digest,
        idempotency_key=key,
        api_key_id=api_key_id,
    )
    return commit_new_job(db, job, idempotency_key)


def _resolve_base(db: Session, base_model: str) -> tuple[str, str | None]:
    """(base model id, parent erased model id) for a base-model name or an erased model's id."""
    base = base_model_by_name(db, base_model)
    if base is not None:
        return base.id, None
    parent = db.get(ErasedModel, base_model)
    if parent is None:
        names = [b.name for b in list_base_models(db)[:20]]
        raise InvalidField(
            ["body", "base_model"],
            f"no base model named {base_model!r} and no erased model with that id; "
            f"registered base models: {', '.join(names) or 'none (mace base-models add)'}",
        )
    job = db.get(ErasureJob, parent.job_id)
    if job is None or job.status != "succeeded":
        status = job.status if job else "missing"
        raise Conflict(
            f"erased model {parent.id} comes from job {parent.job_id}, which is {status}; "
            "only a model whose erasure succeeded can be erased further"
        )
    return parent.base_model_id, parent.id


def list_erasures(
    db: Session, *, status: str | None = None, offset: int = 0, limit: int = 50
) -> tuple[list[ErasureJob], int]:
    """A page of erasure jobs, newest first, and how many match in all."""
    return jobs.page(db, ErasureJob, status=status, offset=offset, limit=limit)


def get_erasure(db: Session, job_id: str) -> ErasureJob:
    """The job `job_id`; raises NotFound."""
    return jobs.get_job(db, ErasureJob, job_id, noun="erasure job")


def cancel_erasure(db: Session, job_id: str) -> ErasureJob:
    """Cancel a queued job now, or ask a running job's worker to stop at its next step."""
    return jobs.cancel(db, ErasureJob, job_id, noun="erasure job")
