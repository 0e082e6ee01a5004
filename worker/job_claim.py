"""What a worker does with a job it could not claim: nothing when the job is final, wait when
another worker holds a live lease on it, and cancel it for good when its owner is gone."""

from __future__ import annotations

import logging
from datetime import UTC, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.catalog.models import ErasureJob, JobState, now

logger = logging.getLogger(__name__)


class JobHeld(Exception):
    """The job is running under another worker's live lease; look again after `countdown` s."""

    def __init__(self, job_id: str, countdown: float):
        super().__init__(f"job {job_id} is held by another worker for {countdown:.0f}s more")
        self.countdown = countdown


def not_claimed(
    db: Session, job_id: str, lease: timedelta, table: type[JobState] = ErasureJob
) -> dict:
    """Why the job could not be claimed: final (nothing to do), or held by another worker."""
    job = db.get(table, job_id)
    if job is None:
        logger.warning("job %s: no such job; message dropped", job_id)
        return {"status": "missing"}
    if job.status != "running":
        return {"status": job.status}
    beat = job.heartbeat_at or job.started_at or now()
    silent = now() - (beat if beat.tzinfo else beat.replace(tzinfo=UTC))
    if silent < lease:
        raise JobHeld(job_id, (lease - silent).total_seconds() + 1)
    # The owner is gone and a cancel was asked for (claim refuses those): cancel it for good.
    db.execute(
        update(table)
        .where(
            table.id == job_id,
            table.status == "running",
            table.cancel_requested.is_(True),
        )
        .values(status="cancelled", finished_at=now())
    )
    db.commit()
    return {"status": db.get(table, job_id, populate_existing=True).status}
