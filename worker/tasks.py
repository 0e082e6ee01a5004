"""The Celery tasks: thin wrappers that hand catalog ids and payloads to the job modules.

Task names are the contract with the API (`app.queue`); the job id is the erase task's id.
`worker.celery_worker` registers them on the app of `app.queue`; importing this module alone
builds no Celery app.
"""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import SQLAlchemyError

from app.queue import ERASE_CHUNK_TASK, ERASE_TASK, EVALUATE_TASK, EXPORT_TASK, GENERATE_TASK
from worker.erase_chunk import run_erasure_chunk
from worker.erase_job import run_erasure_job
from worker.evaluate_job import run_evaluation_job
from worker.export_job import export_model
from worker.generation import generate
from worker.job_claim import JobHeld

DATABASE_RETRY_S = 15
MAX_RETRIES = 100


@shared_task(name=ERASE_TASK, bind=True, max_retries=MAX_RETRIES)
def erase_task(self, job_id: str) -> dict:
    """Run erasure job `job_id`; a job another worker holds is looked at again later."""
    try:
        return run_erasure_job(job_id)
    except JobHeld as held:
        raise self.retry(countdown=held.countdown) from held
    except SQLAlchemyError as exc:
        raise self.retry(exc=exc, countdown=DATABASE_RETRY_S) from exc


@shared_task(name=ERASE_CHUNK_TASK)
def erase_chunk_task(job_id: str, number: int) -> dict:
    """Train chunk `number` of fanned-out erasure job `job_id` unless it is done or held; never
    retried: the job's own worker trains a chunk nobody else does."""
    return run_erasure_chunk(job_id, number)


@shared_task(name=EVALUATE_TASK, bind=True, max_retries=MAX_RETRIES)
def evaluate_task(self, job_id: str) -> dict:
    """Run evaluation job `job_id`; a job another worker holds is looked at again later."""
    try:
        return run_evaluation_job(job_id)
    except JobHeld as held:
        raise self.retry(countdown=held.countdown) from held
    except SQLAlchemyError as exc:
        raise self.retry(exc=exc, countdown=DATABASE_RETRY_S) from exc


@shared_task(name=GENERATE_TASK)
def generate_task(**payload) -> dict:
    """Images from a base or erased model (payload: see `worker.generation.generate`)."""
    return generate(payload)


@shared_task(name=EXPORT_TASK)
def export_task(model_id: str, kind: str) -> dict:
    """Export an erased model (`kind`: diffusers, unet-pt, lora, lora-kohya) as an artifact."""
    return export_model(model_id, kind)
