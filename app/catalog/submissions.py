"""Idempotent job submission, for every job table: an `Idempotency-Key` (scoped to the
submitting API key) returns the earlier job for the same request and refuses another request."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict

from .models import JobState


@dataclass(frozen=True)
class Submission:
    job: JobState
    created: bool  # False: an earlier submission with the same Idempotency-Key


def scoped_key(api_key_id: str, idempotency_key: str | None) -> str | None:
    return f"{api_key_id}:{idempotency_key}" if idempotency_key else None


def earlier_submission(
    db: Session, table: type[JobState], key: str | None, digest: str, idempotency_key: str | None
) -> Submission | None:
    """The earlier job submitted with this key, if any; raises Conflict when its request differs."""
    if key is None:
        return None
    earlier = db.scalar(select(table).where(table.idempotency_key == key))
    if earlier is None:
        return None
    if earlier.request_sha256 != digest:
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} was used for a different request (job "
            f"{earlier.id}); send that request unchanged, or use a new key for a new request"
        )
    return Submission(earlier, created=False)


def commit_new_job(db: Session, job: JobState, idempotency_key: str | None) -> Submission:
    """Insert and commit `job`; a concurrent submit with the same key that won the unique
    constraint is answered with its job instead."""
    db.add(job)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        earlier = earlier_submission(
            db, type(job), job.idempotency_key, job.request_sha256, idempotency_key
        )
        if earlier is None:
            raise
        return earlier
    return Submission(job, created=True)
