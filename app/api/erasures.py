"""`/erasures`: submit an erasure, follow it, cancel it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app.catalog import erasures
from app.dispatch import send_erasure
from app.schemas.common import Limit, Offset
from app.schemas.erasures import ErasureCreate, ErasureJobPublic, ErasureJobsPublic, JobStatus

from .deps import OperatorKey, SessionDep, ViewerKey
from .submissions import answer_submission, checked_idempotency_key

router = APIRouter(prefix="/erasures", tags=["erasures"])


@router.post(
    "",
    status_code=202,
    response_model=ErasureJobPublic,
    responses={
        200: {"description": "a replay of an earlier submission with the same Idempotency-Key"},
        409: {"description": "the Idempotency-Key was used for another request"},
    },
)
def submit_erasure(
    body: ErasureCreate,
    db: SessionDep,
    key: OperatorKey,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> ErasureJobPublic:
    """Queue an erasure. The job is durable once this answers 202, even if the broker is down
    (it is sent when the broker is back). Follow it at the `Location` header."""
    submission = erasures.submit_erasure(
        db,
        request=body,
        api_key_id=key.id,
        idempotency_key=checked_idempotency_key(idempotency_key),
    )
    job = answer_submission(db, submission, response, send=send_erasure, location="/erasures")
    return ErasureJobPublic.model_validate(job)


@router.get("", response_model=ErasureJobsPublic)
def list_erasures(
    db: SessionDep,
    _key: ViewerKey,
    status: JobStatus | None = None,
    offset: Annotated[Offset, Query()] = 0,
    limit: Annotated[Limit, Query()] = 50,
) -> ErasureJobsPublic:
    """Jobs, newest first, optionally only those with `status`."""
    page, count = erasures.list_erasures(db, status=status, offset=offset, limit=limit)
    return ErasureJobsPublic(data=[ErasureJobPublic.model_validate(j) for j in page], count=count)


@router.get("/{job_id}", response_model=ErasureJobPublic)
def read_erasure(job_id: str, db: SessionDep, _key: ViewerKey) -> ErasureJobPublic:
    """A job's status, stage, progress and timings; `model_id` once it succeeded."""
    return ErasureJobPublic.model_validate(erasures.get_erasure(db, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=ErasureJobPublic,
    responses={
        202: {"description": "running: its worker stops at its next step"},
        409: {"description": "the job already finished"},
    },
)
def cancel_erasure(
    job_id: str, db: SessionDep, _key: OperatorKey, response: Response
) -> ErasureJobPublic:
    """Cancel a queued job at once (200), or ask a running one to stop (202)."""
    job = erasures.cancel_erasure(db, job_id)
    if job.status == "running":
        response.status_code = 202
    return ErasureJobPublic.model_validate(job)
