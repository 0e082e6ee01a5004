"""Job state transitions. Every transition is a conditional UPDATE, so two workers (a redelivered
message, a retry) can never both own a job, and a finished job never changes again.

Every function works on any job table (`ErasureJob`, the default, or `EvaluationJob`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound

from .models import ErasureJob, JobState, now

JobTable = type[JobState]

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
LEASE = timedelta(seconds=90)  # a running job whose worker is silent this long may be taken over


def claim(
    db: Session,
    job_id: str,
    *,
    worker: str,
    lease: timedelta = LEASE,
    table: JobTable = ErasureJob,
) -> JobState | None:
    """queued -> running, or take over a running job whose worker stopped heartbeating."""
    moment = now()
    result = db.execute(
        update(table)
        .where(
            table.id == job_id,
            table.cancel_requested.is_(False),
            or_(
                table.status == "queued",
                (table.status == "running") & (table.heartbeat_at < moment - lease),
            ),
        )
        .values(
            status="running",
            worker=worker,
            heartbeat_at=moment,
            attempts=table.attempts + 1,
            started_at=moment,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return db.get(table, job_id, populate_existing=True) if result.rowcount == 1 else None


def heartbeat(
    db: Session,
    job_id: str,
    *,
    worker: str,
    stage: str | None = None,
    progress: float | None = None,
    stage_timings: dict | None = None,
    table: JobTable = ErasureJob,
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
        update(table)
        .where(table.id == job_id, table.status == "running", table.worker == worker)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return result.rowcount == 1


def cancel_requested(db: Session, job_id: str, *, table: JobTable = ErasureJob) -> bool:
    return bool(db.scalar(select(table.cancel_requested).where(table.id == job_id)))


def finish(
    db: Session, job_id: str, *, worker: str, status: str, table: JobTable = ErasureJob, **values
) -> bool:
    """running -> succeeded | failed | cancelled, only by the worker that owns the job."""
    assert status in FINAL
    result = db.execute(
        update(table)
        .where(table.id == job_id, table.status == "running", table.worker == worker)
        .values(status=status, finished_at=now(), **values)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return result.rowcount == 1


def request_cancel(db: Session, job_id: str, *, table: JobTable = ErasureJob) -> JobState | None:
    """A queued job is cancelled at once; a running one when its worker next checks."""
    db.execute(
        update(table)
        .where(table.id == job_id, table.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now())
        .execution_options(synchronize_session=False)
    )
    db.execute(
        update(table)
        .where(table.id == job_id, table.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return db.get(table, job_id, populate_existing=True)


def mark_dispatched(db: Session, job_id: str, *, table: JobTable = ErasureJob) -> None:
    db.execute(update(table).where(table.id == job_id).values(dispatched=True))
    db.commit()


def mark_loaded_job_dispatched(db: Session, job: JobState) -> None:
    """`mark_dispatched` for a job the session holds: one UPDATE, and the object stays current."""
    job.dispatched = True
    db.commit()


def undispatched(
    db: Session, older_than: datetime, limit: int = 100, *, table: JobTable = ErasureJob
) -> list[str]:
    """Queued jobs whose message never reached the broker (it was down at submit)."""
    return list(
        db.scalars(
            select(table.id)
            .where(table.status == "queued", table.dispatched.is_(False))
            .where(table.created_at < older_than)
            .order_by(table.created_at)
            .limit(limit)
        )
    )


def page(
    db: Session, table: JobTable, *, status: str | None, offset: int, limit: int
) -> tuple[list, int]:
    """A page of jobs, newest first, optionally only those with `status`, and the match count."""
    query = select(table)
    if status is not None:
        query = query.where(table.status == status)
    count = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = query.order_by(table.created_at.desc(), table.id).offset(offset).limit(limit)
    return list(db.scalars(rows)), count


def get_job(db: Session, table: JobTable, job_id: str, *, noun: str):
    """The job `job_id`; raises NotFound naming it as `noun`."""
    job = db.get(table, job_id)
    if job is None:
        raise NotFound(f"no {noun} {job_id}")
    return job


def cancel(db: Session, table: JobTable, job_id: str, *, noun: str):
    """Cancel a queued job now, or ask a running job's worker to stop at its next step.

    Raises:
        NotFound: no such job.
        Conflict: the job already finished.
    """
    job = get_job(db, table, job_id, noun=noun)
    if job.status in FINAL:
        raise Conflict(f"job {job_id} is already {job.status}; only a queued or running job")
    job = request_cancel(db, job_id, table=table)
    if job.status not in ("cancelled", "running"):
        raise Conflict(f"job {job_id} finished ({job.status}) before it could be cancelled")
    return job
