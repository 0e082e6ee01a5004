"""One erasure job, from its catalog row to a stored and recorded erased model.

claim the row -> load the base (and the parent's edit) -> engine, each group's LoRA stored as it
is trained -> write the output folder -> upload and verify every artifact -> in one transaction:
the erased model, its artifacts and the job's `succeeded`. The erased model's id is the job's id,
so a redelivered message can never record a second model.

A job with many pending groups first shares its stage 2 out among the workers
(`worker.stage2_fanout`), then fuses the stored LoRAs here, as a resumed job does.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import timedelta
from pathlib import Path

from app.catalog import jobs
from app.catalog.db import session_factory
from app.catalog.models import BaseModel, ErasedModel, ErasureJob
from app.settings import get_settings
from worker import runtime
from worker.erase_chunk import ChunkWork
from worker.erase_inputs import identity_of, job_request, parent_edit
from worker.erasure.artifacts import write_erasure
from worker.erasure.erase import erase
from worker.erasure.errors import ErasureCancelled, ErasureInputError
from worker.job_claim import not_claimed
from worker.job_lease import JobLease
from worker.job_request import ErasureRequest, recorded_options
from worker.job_run import JobRun
from worker.lora_checkpoints import drop_checkpoints, load_checkpoints, store_checkpoint
from worker.model_records import record_erased_model, upload_erasure
from worker.stage2_fanout import Stage2FanOut, fans_out

logger = logging.getLogger(__name__)


def run_erasure_job(job_id: str) -> dict:
    """Run the job if it can be claimed; returns `{"status": ...}` as the row ends up.

    Raises `JobHeld` when another worker holds a live lease on it (the caller retries later), and
    database errors as they come (the caller retries; the lease then lets the job be taken over).
    """
    settings = get_settings()
    worker, lease = runtime.worker_name(), timedelta(seconds=settings.JOB_LEASE_S)
    with session_factory()() as db:
        job = jobs.claim(db, job_id, worker=worker, lease=lease)
        if job is None:
            return not_claimed(db, job_id, lease)
        base = db.get(BaseModel, job.base_model_id)
        try:
            request = job_request(db, job)
        except ErasureInputError as exc:
            jobs.finish(db, job_id, worker=worker, status="failed", error=str(exc))
            return {"status": "failed", "error": str(exc)}
    logger.info("job %s: attempt %d on %s", job_id, job.attempts, worker)
    with JobLease(
        job_id, worker, stages=request.options.stages, lease_s=lease.total_seconds()
    ) as held:
        return _ErasureRun(job, base, request, held).run()


class _ErasureRun(JobRun):
    table, noun, stored_what = ErasureJob, "job", "the artifacts"

    def __init__(self, job: ErasureJob, base: BaseModel, request: ErasureRequest, lease: JobLease):
        super().__init__(job, lease)
        self.base, self.request = base, request

    def work(self) -> dict:
        result = self.erase()
        if self.cancel_requested():
            raise ErasureCancelled("the erasure was cancelled")
        return self.publish(result)

    def erase(self):
        self.lease.progress("load", 0.0)
        parent = parent_edit(self.store, self.job)
        groups = self.request.groups
        trained = load_checkpoints(self.store, self.job.id, len(groups))
        pending = [index for index in range(len(groups)) if index not in trained]
        shared_s = None
        if fans_out(self.job.id, self.request.options.stages, pending, self.settings):
            work = ChunkWork(self.job, self.base, self.request, parent)
            shared_s = Stage2FanOut(work, self.lease, self.settings).run(pending)
            trained = load_checkpoints(self.store, self.job.id, len(groups))
        with runtime.pipelines().use(self.base.source, self.base.sha256) as pipe:
            self.lease.progress("load", 1.0)
            result = erase(
                pipe,
                identity_of(self.base),
                groups,
                self.request.options,
                progress=self.lease.progress,
                should_cancel=self.lease.should_cancel,
                trained_loras=trained,
                on_lora_trained=lambda index, lora: store_checkpoint(self.store, self.job.id, lora),
                parent=parent,
            )
        if shared_s is not None:  # the engine only fused: stage 2 took the chunks' time
            result.timings["lora"] = shared_s + result.timings.get("lora", 0.0)
        return result

    def publish(self, result) -> dict:
        self.lease.progress("upload", 0.0)
        with tempfile.TemporaryDirectory(prefix="mace-erasure-") as scratch:
            folder = write_erasure(result, Path(scratch) / "out")
            uploaded = upload_erasure(
                self.store,
                self.job.id,
                folder,
                retrying=self.with_retries,
                progress=lambda fraction: self.lease.progress("upload", fraction),
            )
        timings = {**self.lease.timings, **{k: round(v, 3) for k, v in result.timings.items()}}
        model = ErasedModel(
            id=self.job.id,
            name=self.request.name,
            base_model_id=self.job.base_model_id,
            parent_model_id=self.job.parent_model_id,
            job_id=self.job.id,
            concepts=[group.to_dict() for group in self.request.groups],
            options=recorded_options(self.request),
            seed=self.request.options.seed,
            tags=self.request.tags,
        )
        with session_factory()() as db:
            recorded = record_erased_model(
                db,
                self.job,
                worker=self.lease.worker,
                model=model,
                artifacts=uploaded,
                stage_timings=timings,
            )
        if not recorded:
            logger.warning("job %s: lost ownership before recording the model", self.job.id)
            return {"status": "lost"}
        drop_checkpoints(self.store, self.job.id, len(self.request.groups))
        logger.info("job %s: succeeded (%d artifacts)", self.job.id, len(uploaded))
        return {"status": "succeeded", "model_id": self.job.id}

    def cancel_requested(self) -> bool:
        with session_factory()() as db:
            return jobs.cancel_requested(db, self.job.id)
