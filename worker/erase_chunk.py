"""One chunk of a fanned-out erasure job: some groups' LoRAs, trained by whichever worker claims it.

A chunk is a row of `erasure_chunks` (`app.catalog.chunks`). The worker that claims it
heartbeats the row (`ChunkLease`), trains with the engine's `train_stage2` only the chunk's groups
whose checkpoint is not stored yet, stores each LoRA as a checkpoint as soon as it is trained
(`worker.lora_checkpoints`, the keys a job's own run uses), then marks the chunk done. So a chunk
whose worker died is claimed again once its lease has run out and trains only what is missing,
and a done chunk is never trained again.

`run_erasure_chunk` is the `mace.erase_chunk` task: an invitation to help, never needed for the
job to finish. It trains its chunk only when the job is running and the chunk is free, and gives
the chunk back on any failure; the job's own worker (`worker.stage2_fanout`) trains every chunk
nobody else takes and takes over chunks whose worker went silent, so the job's errors surface
there, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app.catalog import chunks
from app.catalog.db import session_factory
from app.catalog.models import BaseModel, ErasureChunk, ErasureJob
from app.settings import get_settings
from worker import runtime
from worker.erase_inputs import identity_of, job_request, parent_edit
from worker.erasure.edit import CompactEdit
from worker.erasure.erase import train_stage2
from worker.erasure.errors import ErasureCancelled
from worker.job_lease import CANCEL_POLL_S
from worker.job_request import ErasureRequest
from worker.lora_checkpoints import checkpoint_key, store_checkpoint

logger = logging.getLogger(__name__)

Report = Callable[[str, float], None]


class ChunkLease:
    """A worker's hold on one claimed chunk: a heartbeat thread keeps the claim (and writes the
    chunk's progress); `should_cancel` turns true once the claim is lost, the job is no longer
    running or a cancel was asked for. Leaving the block gives back an unfinished chunk."""

    def __init__(
        self,
        chunk: ErasureChunk,
        worker: str,
        *,
        lease_s: float,
        also_cancel: Callable[[], bool] | None = None,
    ):
        self.job_id, self.number, self.groups = chunk.job_id, chunk.number, list(chunk.groups)
        self.worker = worker
        self.fraction = 0.0  # of the chunk's groups stored, the one being trained counting in part
        self.lost = threading.Event()
        self.finished = False
        self.heartbeat_s = max(1.0, min(10.0, lease_s / 3))
        self._also_cancel = also_cancel or (lambda: False)
        self._stopped = (0.0, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"chunk-{chunk.job_id}-{chunk.number}", daemon=True
        )

    def __enter__(self) -> ChunkLease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.heartbeat_s + 5)
        if self.finished or self.lost.is_set():
            return
        try:
            with session_factory()() as db:
                chunks.release(db, self.job_id, self.number, worker=self.worker)
        except SQLAlchemyError as exc:  # its lease runs out instead
            logger.warning("job %s: chunk %d not given back: %s", self.job_id, self.number, exc)

    def should_cancel(self) -> bool:
        """True once the claim is lost, or (polled at most once per `CANCEL_POLL_S`) the job was
        cancelled or ended."""
        if self.lost.is_set() or self._also_cancel():
            return True
        checked_at, stopped = self._stopped
        if not stopped and time.monotonic() - checked_at >= CANCEL_POLL_S:
            try:
                with session_factory()() as db:
                    row = db.execute(
                        select(ErasureJob.status, ErasureJob.cancel_requested).where(
                            ErasureJob.id == self.job_id
                        )
                    ).first()
                stopped = row is None or row.status != "running" or bool(row.cancel_requested)
            except SQLAlchemyError as exc:  # the database is down for a moment: keep working
                logger.warning("job %s: cancel check failed: %s", self.job_id, exc)
            self._stopped = (time.monotonic(), stopped)
        return stopped

    def finish(self) -> bool:
        with session_factory()() as db:
            self.finished = chunks.finish(db, self.job_id, self.number, worker=self.worker)
        return self.finished

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with session_factory()() as db:
                    held = chunks.heartbeat(
                        db, self.job_id, self.number, worker=self.worker, progress=self.fraction
                    )
            except SQLAlchemyError as exc:
                logger.warning(
                    "job %s: chunk %d heartbeat failed: %s", self.job_id, self.number, exc
                )
                continue
            if not held:
                logger.warning(
                    "job %s: chunk %d no longer held by %s; stopping",
                    self.job_id,
                    self.number,
                    self.worker,
                )
                self.lost.set()
                return


@dataclass(frozen=True)
class ChunkWork:
    """What training any chunk of one job needs."""

    job: ErasureJob
    base: BaseModel
    request: ErasureRequest
    parent: CompactEdit | None

    def train(self, lease: ChunkLease, report: Report | None = None) -> list[int]:
        """Train the chunk's groups that have no stored checkpoint, store each, mark the chunk
        done; returns the groups trained. Raises `ErasureCancelled` when `lease` says stop.

        Args:
            lease: the held chunk.
            report: also told the engine's (stage, fraction) reports, the lora stage's as the
                chunk's fraction done.
        """
        store, job_id = runtime.store(), self.job.id
        stored = [g for g in lease.groups if _exists(store, checkpoint_key(job_id, g))]
        missing = [g for g in lease.groups if g not in stored]
        if stored:
            logger.info("job %s: chunk %d: groups %s already stored", job_id, lease.number, stored)
        lease.fraction = len(stored) / len(lease.groups)

        def progress(stage: str, fraction: float) -> None:
            if stage == "lora":
                lease.fraction = (len(stored) + fraction * len(missing)) / len(lease.groups)
            if report is not None:
                report(stage, lease.fraction if stage == "lora" else fraction)

        def keep(index: int, lora) -> None:
            if not lease.lost.is_set():  # else another worker holds the chunk now
                store_checkpoint(store, job_id, lora)

        if missing:
            logger.info(
                "job %s: chunk %d trains groups %s on %s",
                job_id,
                lease.number,
                missing,
                lease.worker,
            )
            with runtime.pipelines().use(self.base.source, self.base.sha256) as pipe:
                train_stage2(
                    pipe,
                    identity_of(self.base),
                    self.request.groups,
                    self.request.options,
                    missing,
                    progress=progress,
                    should_cancel=lease.should_cancel,
                    on_lora_trained=keep,
                    parent=self.parent,
                )
        if lease.finish():
            logger.info("job %s: chunk %d done on %s", job_id, lease.number, lease.worker)
        return missing


def run_erasure_chunk(job_id: str, number: int) -> dict:
    """Train chunk `number` of job `job_id` if the job is running and the chunk is free; returns
    `{"status": ...}`: done, skipped (nothing to do here), cancelled or failed (given back)."""
    settings = get_settings()
    worker, lease_s = runtime.worker_name(), settings.JOB_LEASE_S
    with session_factory()() as db:
        job = db.get(ErasureJob, job_id)
        if job is None or job.status != "running" or job.cancel_requested:
            return {"status": "skipped"}
        chunk = chunks.claim(db, job_id, number, worker=worker, lease=timedelta(seconds=lease_s))
        if chunk is None:
            return {"status": "skipped"}
        base = db.get(BaseModel, job.base_model_id)
    with ChunkLease(chunk, worker, lease_s=lease_s) as held:
        try:
            with session_factory()() as db:
                request = job_request(db, job)
            work = ChunkWork(job, base, request, parent_edit(runtime.store(), job))
            work.train(held)
        except ErasureCancelled:
            logger.info("job %s: chunk %d stopped on %s", job_id, number, worker)
            return {"status": "cancelled"}
        except Exception:  # given back: the job's own worker trains it and reports the error
            logger.exception("job %s: chunk %d failed on %s; given back", job_id, number, worker)
            return {"status": "failed"}
    return {"status": "done"}


def _exists(store, key: str) -> bool:
    try:
        return store.exists(key)
    except Exception as exc:  # unknown: train it (again)
        logger.warning("%s: not checked: %s", key, exc)
        return False
