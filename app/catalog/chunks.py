"""Chunk transitions of a fanned-out erasure job (`ErasureChunk`), conditional UPDATEs like the
job's own: pending -> running (claimed, heartbeaten) -> done, or back to pending when its worker
gives it up; a running chunk whose worker went silent for a lease may be claimed again."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .models import ErasureChunk, now


def plan(db: Session, job_id: str, groups: list[list[int]]) -> list[ErasureChunk]:
    """The job's chunks: those already planned (an earlier attempt), else `groups`, one chunk
    each, inserted now. Only the worker that owns the job calls this."""
    found = of_job(db, job_id)
    if found:
        return found
    db.add_all(
        ErasureChunk(job_id=job_id, number=number, groups=list(chunk))
        for number, chunk in enumerate(groups)
    )
    db.commit()
    return of_job(db, job_id)


def of_job(db: Session, job_id: str) -> list[ErasureChunk]:
    rows = select(ErasureChunk).where(ErasureChunk.job_id == job_id).order_by(ErasureChunk.number)
    return list(db.scalars(rows.execution_options(populate_existing=True)))


def claim(
    db: Session, job_id: str, number: int, *, worker: str, lease: timedelta
) -> ErasureChunk | None:
    """pending -> running for `worker`, or take over a running chunk whose worker is silent."""
    moment = now()
    result = db.execute(
        update(ErasureChunk)
        .where(
            ErasureChunk.job_id == job_id,
            ErasureChunk.number == number,
            or_(
                ErasureChunk.status == "pending",
                (ErasureChunk.status == "running") & (ErasureChunk.heartbeat_at < moment - lease),
            ),
        )
        .values(
            status="running",
            worker=worker,
            heartbeat_at=moment,
            started_at=moment,
            attempts=ErasureChunk.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    db.commit()
    if result.rowcount != 1:
        return None
    return db.get(ErasureChunk, (job_id, number), populate_existing=True)


def claim_any(db: Session, job_id: str, *, worker: str, lease: timedelta) -> ErasureChunk | None:
    """The highest-numbered chunk `claim` can take (helpers are sent the others first)."""
    stale = now() - lease
    candidates = db.scalars(
        select(ErasureChunk.number)
        .where(
            ErasureChunk.job_id == job_id,
            or_(
                ErasureChunk.status == "pending",
                (ErasureChunk.status == "running") & (ErasureChunk.heartbeat_at < stale),
            ),
        )
        .order_by(ErasureChunk.number.desc())
    ).all()
    for number in candidates:
        chunk = claim(db, job_id, number, worker=worker, lease=lease)
        if chunk is not None:
            return chunk
    return None


def heartbeat(db: Session, job_id: str, number: int, *, worker: str, progress: float) -> bool:
    """Record progress while `worker` holds the chunk; False when it no longer does."""
    return _update_held(db, job_id, number, worker, heartbeat_at=now(), progress=progress)


def finish(db: Session, job_id: str, number: int, *, worker: str) -> bool:
    """running -> done, only by the worker that holds the chunk."""
    moment = now()
    return _update_held(db, job_id, number, worker, status="done", progress=1.0, finished_at=moment)


def release(db: Session, job_id: str, number: int, *, worker: str) -> bool:
    """running -> pending, so another worker (the job's own, at the latest) trains it."""
    return _update_held(db, job_id, number, worker, status="pending", heartbeat_at=None)


def _update_held(db: Session, job_id: str, number: int, worker: str, **values) -> bool:
    result = db.execute(
        update(ErasureChunk)
        .where(
            ErasureChunk.job_id == job_id,
            ErasureChunk.number == number,
            ErasureChunk.status == "running",
            ErasureChunk.worker == worker,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return result.rowcount == 1
