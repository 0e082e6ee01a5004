"""One erasure job, from its catalog row to a stored and recorded erased model.

claim the row -> load the base (and the parent's edit) -> engine, each group's LoRA stored as it
is trained -> write the output folder -> upload and verify every artifact -> in one transaction:
the erased model, its artifacts and the job's `succeeded`. The erased model's id is the job's id,
so a redelivered message can never record a second model.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts import object_key
from app.catalog import jobs
from app.catalog.db import session_factory
from app.catalog.models import Artifact, BaseModel, ErasedModel, ErasureJob, PromptSet
from app.settings import get_settings
from worker import runtime
from worker.erasure.artifacts import write_erasure
from worker.erasure.base_model import ModelIdentity
from worker.erasure.edit import CompactEdit
from worker.erasure.erase import erase
from worker.erasure.errors import ErasureCancelled, ErasureInputError
from worker.job_claim import not_claimed
from worker.job_lease import JobLease
from worker.job_request import ErasureRequest, parse_request, recorded_options
from worker.job_run import JobRun
from worker.lora_checkpoints import drop_checkpoints, load_checkpoints, store_checkpoint
from worker.model_records import record_erased_model, upload_erasure

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
            request = parse_request(job.request, prompt_set=lambda id_: _prompts(db, id_))
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
        parent = self.parent_edit()
        trained = load_checkpoints(self.store, self.job.id, len(self.request.groups))
        identity = ModelIdentity(name=self.base.name, sha256=self.base.sha256)
        with runtime.pipelines().use(self.base.source, self.base.sha256) as pipe:
            self.lease.progress("load", 1.0)
            return erase(
                pipe,
                identity,
                self.request.groups,
                self.request.options,
                progress=self.lease.progress,
                should_cancel=self.lease.should_cancel,
                trained_loras=trained,
                on_lora_trained=lambda index, lora: store_checkpoint(self.store, self.job.id, lora),
                parent=parent,
            )

    def parent_edit(self) -> CompactEdit | None:
        parent_id = self.job.parent_model_id
        if not parent_id:
            return None
        with session_factory()() as db:
            parent = db.get(ErasedModel, parent_id)
            edit = db.scalar(
                select(Artifact).where(Artifact.model_id == parent_id, Artifact.kind == "edit")
            )
        if parent is None or edit is None:
            raise ErasureInputError(f"parent model {parent_id} does not exist or has no edit")
        if parent.base_model_id != self.job.base_model_id:
            raise ErasureInputError(
                f"parent model {parent_id} was made from another base model; use its base"
            )
        return runtime.edits().get(object_key(self.store, edit.uri), edit.sha256)

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


def _prompts(db: Session, prompt_set_id: str) -> list[str]:
    prompt_set = db.get(PromptSet, prompt_set_id)
    if prompt_set is None:
        raise ErasureInputError(f"no prompt set {prompt_set_id}")
    return list(prompt_set.prompts)
