"""Job state transitions. Every transition is a conditional UPDATE, so two workers (a redelivered
message, a retry) can never both own a job, and a finished job never changes again."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .models import ErasureJob, now

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
LEASE = timedelta(seconds=90)  # a running job whose worker is silent this long may be taken over


def claim(db: Session, job_id: str, *, worker: str, lease: timedelta = LEASE) -> ErasureJob | None:
    """queued -> running, or take over a running job whose worker stopped heartbeating."""
    moment = now()
    result = db.execute(
        update(ErasureJob)
        .where(
            ErasureJob.id == job_id,
            ErasureJob.cancel_requested.is_(False),
            or_(
                ErasureJob.status == "queued",
                (ErasureJob.status == "running") & (ErasureJob.heartbeat_at < moment - lease),
            ),
        )
        .values(
            status="running",
            worker=worker,
            heartbeat_at=moment,
            attempts=ErasureJob.attempts + 1,
            started_at=moment,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return db.get(ErasureJob, job_id, populate_existing=True) if result.rowcount == 1 else None


def heartbeat(
    db: Session,
    job_id: str,
    *,
    worker: str,
    stage: str | None = None,
    progress: float | None = None,
    stage_timings: dict | None = None,
) -> bool:
    """Record progress while this worker owns the job; False when it no longer does."""
    values: dict = {"heartbeat_at": now()}
    if stage is not None:
        values["stage"] = stage
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    if stage_timings is not None:
        values["stage_timings"] = stage_timings
    result = db.execute(
        update(ErasureJob)
        .where(ErasureJob.id == job_id, ErasureJob.status == "running", ErasureJob.worker == worker)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return result.rowcount == 1


def cancel_requested(db: Session, job_id: str) -> bool:
    return bool(db.scalar(select(ErasureJob.cancel_requested).where(ErasureJob.id == job_id)))


def finish(db: Session, job_id: str, *, worker: str, status: str, **values) -> bool:
    """running -> succeeded | failed | cancelled, only by the worker that owns the job."""
    assert status in FINAL
    result = db.execute(
        update(ErasureJob)
        .where(ErasureJob.id == job_id, ErasureJob.status == "running", ErasureJob.worker == worker)
        .values(status=status, finished_at=now(), **values)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return result.rowcount == 1


def request_cancel(db: Session, job_id: str) -> ErasureJob | None:
    """A queued job is cancelled at once; a running one when its worker next checks."""
    db.execute(
        update(ErasureJob)
        .where(ErasureJob.id == job_id, ErasureJob.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now())
        .execution_options(synchronize_session=False)
    )
    db.execute(
        update(ErasureJob)
        .where(ErasureJob.id == job_id, ErasureJob.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return db.get(ErasureJob, job_id, populate_existing=True)


def mark_dispatched(db: Session, job_id: str) -> None:
    db.execute(update(ErasureJob).where(ErasureJob.id == job_id).values(dispatched=True))
    db.commit()


def mark_loaded_job_dispatched(db: Session, job: ErasureJob) -> None:
    """`mark_dispatched` for a job the session holds: one UPDATE, and the object stays current."""
    job.dispatched = True
    db.commit()


def undispatched(db: Session, older_than: datetime, limit: int = 100) -> list[str]:
    """Queued jobs whose message never reached the broker (it was down at submit)."""
    return list(
        db.scalars(
            select(ErasureJob.id)
            .where(ErasureJob.status == "queued", ErasureJob.dispatched.is_(False))
            .where(ErasureJob.created_at < older_than)
            .order_by(ErasureJob.created_at)
            .limit(limit)
        )
    )
