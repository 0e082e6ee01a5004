"""What every job-submitting route does after the catalog accepted a request."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Response
from sqlalchemy.orm import Session

from app.catalog import jobs
from app.catalog.models import JobState
from app.catalog.submissions import Submission
from app.errors import InvalidField

IDEMPOTENCY_KEY_LENGTH = 160


def checked_idempotency_key(value: str | None) -> str | None:
    """The `Idempotency-Key` header as given; a 422 when it is not short printable ASCII."""
    if value is not None and not (
        0 < len(value) <= IDEMPOTENCY_KEY_LENGTH and value.isascii() and value.isprintable()
    ):
        raise InvalidField(
            ["header", "Idempotency-Key"],
            f"use 1 to {IDEMPOTENCY_KEY_LENGTH} printable ASCII characters",
        )
    return value


def answer_submission(
    db: Session,
    submission: Submission,
    response: Response,
    *,
    send: Callable[[str], bool],
    location: str,
) -> JobState:
    """Send a new job's message after its commit (on failure it waits in the outbox), or answer
    a replayed submission with 200; `Location` points at the job either way."""
    job = submission.job
    if submission.created:
        if send(job.id):
            jobs.mark_loaded_job_dispatched(db, job)
    else:
        response.status_code = 200
    response.headers["Location"] = f"{location}/{job.id}"
    return job
