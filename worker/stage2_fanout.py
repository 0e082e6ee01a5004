"""Stage 2 of a large erasure job shared out among the workers of the `erase` queue.

A job whose lora stage has more pending groups (no stored checkpoint) than
`MACE_STAGE2_CHUNK_GROUPS` is split into chunks of about that many groups, rows of
`erasure_chunks` planned once by the worker that owns the job (its "own" worker). That worker:

1. sends one `mace.erase_chunk` message per open chunk but the last, an invitation to any idle
   worker on the `erase` queue (`worker.erase_chunk.run_erasure_chunk`);
2. claims chunks itself, last first, and trains them like any helper, until none is free;
3. then waits, polling the rows, while helpers finish theirs, and takes over any chunk whose
   worker stopped heartbeating for a lease (it trains only the groups still missing);
4. once every chunk is done, returns to `worker.erase_job`, which loads every stored LoRA and
   runs the engine's `erase` (fusion only, the LoRAs given), uploads and records `succeeded`.

Why this shape: the job row keeps one owner for its whole life, heartbeaten by its `JobLease`,
so the lease, the redelivery of the job's message, cancel and the conditional `succeeded` work
as for any job, and exactly one worker fuses and records the model. The own worker only waits on
chunks a live worker is training, never on a message being picked up, so a single worker process
runs the whole job itself (the invitations then find every chunk done and return at once). When
the own worker dies, the job's message comes back (visibility timeout) to a worker that claims
the job once its lease has run out and finds the planned chunks where they were. Progress on the
job row is the share of the job's groups stored, summed over the chunks' rows; every chunk's
worker polls the job's cancel flag and stops.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from app.catalog import chunks
from app.catalog.db import session_factory
from app.catalog.models import ErasureChunk
from app.dispatch import send
from app.queue import ERASE_CHUNK_TASK, QUEUES
from app.settings import Settings
from worker.erase_chunk import ChunkLease, ChunkWork
from worker.erasure.errors import ErasureCancelled
from worker.job_lease import JobLease

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often the own worker looks at chunks others train
REPORT_S = 1.0  # how often the job's progress is summed over the chunks while training one


def fans_out(job_id: str, stages, pending: list[int], settings: Settings) -> bool:
    """Whether stage 2 is shared out: planned by an earlier attempt, or more pending groups than
    one chunk holds."""
    if "lora" not in stages:
        return False
    with session_factory()() as db:
        if chunks.of_job(db, job_id):
            return True
    size = settings.STAGE2_CHUNK_GROUPS
    return size > 0 and len(pending) > size


def chunk_groups(pending: list[int], size: int) -> list[list[int]]:
    """`pending` in order, in the fewest chunks of at most `size`, sizes differing by one."""
    count = math.ceil(len(pending) / size)
    base, larger = divmod(len(pending), count)
    found, start = [], 0
    for number in range(count):
        end = start + base + (number < larger)
        found.append(pending[start:end])
        start = end
    return found


class Stage2FanOut:
    """The own worker's side of a fanned-out stage 2 (see the module docstring)."""

    def __init__(self, work: ChunkWork, lease: JobLease, settings: Settings):
        self.work, self.lease = work, lease
        self.job_id = work.job.id
        self.size = max(settings.STAGE2_CHUNK_GROUPS, 1)
        self.lease_s = settings.JOB_LEASE_S
        self.total = len(work.request.groups)
        self.outside = 0  # groups stored before the chunks were planned
        self._reported = 0.0

    def run(self, pending: list[int]) -> float:
        """Every chunk trained (here or elsewhere); returns the seconds it took. Raises
        `ErasureCancelled` when the job's lease says stop."""
        started = time.perf_counter()
        with session_factory()() as db:
            planned = chunks.plan(db, self.job_id, chunk_groups(pending, self.size))
        self.outside = self.total - sum(len(chunk.groups) for chunk in planned)
        logger.info(
            "job %s: stage 2 in %d chunks: %s",
            self.job_id,
            len(planned),
            [chunk.groups for chunk in planned],
        )
        self.invite([chunk.number for chunk in planned if chunk.status != "done"][:-1])
        lease = timedelta(seconds=self.lease_s)
        while True:
            if self.lease.should_cancel():
                raise ErasureCancelled("the erasure was cancelled")
            with session_factory()() as db:
                chunk = chunks.claim_any(db, self.job_id, worker=self.lease.worker, lease=lease)
            if chunk is not None:
                self.train(chunk)
                continue
            with session_factory()() as db:
                rows = chunks.of_job(db, self.job_id)
            if all(row.status == "done" for row in rows):
                return time.perf_counter() - started
            self.report(rows)
            time.sleep(POLL_S)

    def invite(self, numbers: list[int]) -> None:
        """One `mace.erase_chunk` message per chunk; a broker that is down only means this
        worker trains them all."""
        for number in numbers:
            try:
                send(
                    ERASE_CHUNK_TASK,
                    queue=QUEUES[ERASE_CHUNK_TASK],
                    args=[self.job_id, number],
                    task_id=f"{self.job_id}-chunk-{number:03d}",
                )
            except Exception as exc:  # kombu, redis and socket errors alike
                logger.warning(
                    "job %s: chunks not shared out (%s); training them here", self.job_id, exc
                )
                return

    def train(self, chunk: ErasureChunk) -> None:
        with ChunkLease(
            chunk, self.lease.worker, lease_s=self.lease_s, also_cancel=self.lease.should_cancel
        ) as held:

            def report(stage: str, fraction: float) -> None:
                if stage != "lora":
                    self.lease.progress(stage, fraction)  # the first chunk's CFR, once
                elif time.monotonic() - self._reported >= REPORT_S:
                    try:
                        with session_factory()() as db:
                            rows = chunks.of_job(db, self.job_id)
                    except SQLAlchemyError as exc:  # only progress: the next report tries again
                        logger.warning("job %s: chunk progress not read: %s", self.job_id, exc)
                        return
                    self.report(rows, own=held)

            self.work.train(held, report)

    def report(self, rows: list[ErasureChunk], own: ChunkLease | None = None) -> None:
        """The job's lora stage: the share of its groups stored, over every chunk."""
        self._reported = time.monotonic()
        done = self.outside + sum(
            (own.fraction if own and row.number == own.number else row.progress) * len(row.groups)
            for row in rows
        )
        self.lease.progress("lora", min(done / max(self.total, 1), 0.99))
