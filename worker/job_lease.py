"""A worker's hold on a running job: progress on the row, a heartbeat, cancellation polling.

The catalog row is written at most every `PROGRESS_INTERVAL_S` from the engine's callback, and
a background thread heartbeats every few seconds so a long step never loses the lease. When a
heartbeat finds the job owned by someone else, the lease is lost and `should_cancel` turns true,
which stops the engine at its next step.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from app.catalog import jobs
from app.catalog.db import session_factory
from app.catalog.models import ErasureJob, JobState, now

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
CANCEL_POLL_S = 1.0

# Share of the overall progress per stage of an erasure; stages a job skips are left out and the
# rest rescaled.
STAGE_WEIGHTS = {
    "load": 0.05,
    "preservation": 0.05,
    "cfr": 0.1,
    "lora": 0.6,
    "fusion": 0.1,
    "upload": 0.1,
}
OPTIONAL_STAGES = ("cfr", "lora", "fusion")


class JobLease:
    """Progress, heartbeat and cancellation of one job owned by `worker`."""

    def __init__(
        self,
        job_id: str,
        worker: str,
        *,
        stages,
        lease_s: float,
        weights: dict[str, float] = STAGE_WEIGHTS,
        table: type[JobState] = ErasureJob,
    ):
        self.job_id, self.worker, self.table = job_id, worker, table
        self.weights = {s: w for s, w in weights.items() if s not in OPTIONAL_STAGES or s in stages}
        self.heartbeat_s = max(1.0, min(10.0, lease_s / 3))
        self.lost = threading.Event()
        self.timings: dict[str, float] = {}
        self._stage: str | None = None
        self._stage_started = 0.0
        self._overall = 0.0
        self._last_write = 0.0
        self._cancel = (0.0, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> JobLease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.heartbeat_s + 5)

    def progress(self, stage: str, fraction: float) -> None:
        """The engine's callback: (stage, fraction of that stage done). A finished stage makes
        the next one current, so the row names the stage being worked on."""
        order = list(self.weights)
        if _index(order, stage) < _index(order, self._stage):
            return  # a late report of a stage already left behind
        moment = time.monotonic()
        changed = stage != self._stage
        if changed:
            self._stage, self._stage_started = stage, moment
        self.timings[stage] = round(moment - self._stage_started, 3)
        if fraction >= 1.0 and stage in order[:-1]:
            stage, fraction, changed = order[order.index(stage) + 1], 0.0, True
            self._stage, self._stage_started = stage, moment
        done = sum(self.weights[s] for s in order if _index(order, s) < _index(order, stage))
        share = self.weights.get(stage, 0.0) * min(max(fraction, 0.0), 1.0)
        self._overall = max(self._overall, min((done + share) / sum(self.weights.values()), 0.999))
        if changed or moment - self._last_write >= PROGRESS_INTERVAL_S:
            self._write(stage=stage, progress=self._overall, stage_timings=dict(self.timings))

    def should_cancel(self) -> bool:
        """True once a cancel is requested or the lease is lost; the database is polled at most
        once per `CANCEL_POLL_S`."""
        if self.lost.is_set():
            return True
        checked_at, requested = self._cancel
        if not requested and time.monotonic() - checked_at >= CANCEL_POLL_S:
            try:
                with session_factory()() as db:
                    requested = jobs.cancel_requested(db, self.job_id, table=self.table)
            except SQLAlchemyError as exc:  # the database is down for a moment: keep working
                logger.warning("job %s: cancel check failed: %s", self.job_id, exc)
            self._cancel = (time.monotonic(), requested)
        return requested

    def note(self, message: str) -> None:
        """Show a passing problem (a store that is down, being retried) on the running job."""
        try:
            with session_factory()() as db:
                db.execute(
                    update(self.table)
                    .where(
                        self.table.id == self.job_id,
                        self.table.status == "running",
                        self.table.worker == self.worker,
                    )
                    .values(error=message[:2000], heartbeat_at=now())
                )
                db.commit()
        except SQLAlchemyError as exc:
            logger.warning("job %s: note not recorded: %s", self.job_id, exc)

    def _write(self, **values) -> None:
        self._last_write = time.monotonic()
        try:
            with session_factory()() as db:
                owned = jobs.heartbeat(
                    db, self.job_id, worker=self.worker, table=self.table, **values
                )
        except SQLAlchemyError as exc:
            logger.warning("job %s: progress not recorded: %s", self.job_id, exc)
            return
        if not owned and not self.lost.is_set():
            logger.warning("job %s: no longer owned by %s; stopping", self.job_id, self.worker)
            self.lost.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._write()


def _index(order: list[str], stage: str | None) -> int:
    return order.index(stage) if stage in order else -1
