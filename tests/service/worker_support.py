"""Helpers of the worker tests: a real Celery worker process, and jobs submitted the way the API
does it (row committed first, then the message with the job id as task id)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.catalog import jobs
from app.catalog.db import make_engine
from app.catalog.models import BaseModel, ErasureJob, EvaluationJob
from app.queue import ERASE_TASK, EVALUATE_TASK, make_celery
from app.serve import worker_command
from app.settings import Settings
from app.storage import make_store

ROOT = Path(__file__).resolve().parents[2]
# Tiny engine settings: a one-group job takes a few seconds on a CPU.
TINY_OPTIONS = {"images_per_concept": 2, "image_steps": 4, "lora_steps": 3}
# Worker settings of the tests: a short lease, so a killed worker's job is taken over quickly.
# One torch thread: the tiny model gains nothing from more, and 2 cores are shared with pytest.
WORKER_ENV = {
    "MACE_JOB_LEASE_S": "8",
    "MACE_STORAGE_BACKOFF_S": "1",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}


def settings_of(env: dict) -> Settings:
    return Settings(**{k.removeprefix("MACE_"): v for k, v in env.items() if k.startswith("MACE_")})


class WorkerProcess:
    """The worker `mace worker` and `mace serve` run, in its own process, logging to a file."""

    def __init__(self, env: dict, log_path: Path, queues: str = "erase,generate"):
        self.env = {**os.environ, **WORKER_ENV, **env}
        self.log_path, self.queues = log_path, queues
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        command = worker_command(self.queues) + [
            "--without-heartbeat", "--without-mingle", "--without-gossip",
            "-n", f"test-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        self.wait_for_log(" ready.", timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[self._offset :]

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited ({self.process.returncode}):\n{self.log()[-3000:]}"
                )
            time.sleep(0.2)
        raise TimeoutError(f"no {text!r} in the worker log after {timeout}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no ack, no cleanup."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Catalog:
    """The test's own view of the catalog and the broker, as the API would have it."""

    def __init__(self, env: dict):
        self.settings = settings_of(env)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.celery = make_celery(self.settings)
        self.store = make_store(self.settings)

    def session(self) -> Session:
        return self.sessions()

    def register_base(self, model_dir: Path) -> BaseModel:
        from worker.erasure.base_model import model_identity

        record = BaseModel(
            name=f"tiny-{uuid.uuid4().hex[:8]}",
            source=str(model_dir),
            sha256=model_identity(str(model_dir)).sha256,
        )
        with self.session() as db:
            db.add(record)
            db.commit()
        return record

    def submit(
        self, base: BaseModel, concepts: list, *, parent_model_id: str | None = None, **options
    ) -> str:
        """Insert a queued job, commit, then send its message (the outbox order)."""
        request = {
            "base_model": base.name,
            "concepts": [{"targets": list(c), "kind": "object", "anchor": None} for c in concepts],
            "stages": ["cfr", "lora", "fusion"],
            "options": {**TINY_OPTIONS, **options},
            "preservation_prompt_set": None,
            "seed": 0,
            "name": "test erasure",
            "tags": ["test"],
        }
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        job = ErasureJob(
            base_model_id=base.id,
            parent_model_id=parent_model_id,
            request=request,
            request_sha256=digest,
        )
        with self.session() as db:
            db.add(job)
            db.commit()
            self.celery.send_task(ERASE_TASK, args=[job.id], task_id=job.id)
            jobs.mark_dispatched(db, job.id)
        return job.id

    def submit_evaluation(self, request: dict) -> str:
        """Insert a queued evaluation job (request in its stored form), then send its message."""
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        job = EvaluationJob(request=request, request_sha256=digest)
        with self.session() as db:
            db.add(job)
            db.commit()
            self.celery.send_task(EVALUATE_TASK, args=[job.id], task_id=job.id)
            jobs.mark_dispatched(db, job.id, table=EvaluationJob)
        return job.id

    def job(self, job_id: str, table=ErasureJob):
        with self.session() as db:
            return db.get(table, job_id)

    def wait(self, job_id: str, until, timeout: float, *, watch=None, table=ErasureJob):
        """Poll the row until `until(job)`; `watch(job)` sees every state on the way."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id, table)
            if watch:
                watch(job)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status}/{job.stage} ({job.error})")
            time.sleep(0.1)

    def wait_final(self, job_id: str, timeout: float, **kwargs):
        return self.wait(job_id, lambda job: job.status in jobs.FINAL, timeout, **kwargs)

    def models_of_job(self, job_id: str) -> list:
        from app.catalog.models import ErasedModel

        with self.session() as db:
            return list(db.scalars(select(ErasedModel).where(ErasedModel.job_id == job_id)))

    def dispose(self) -> None:
        self.engine.dispose()


class Bucket:
    """The test's direct look at the S3 bucket behind MACE_STORAGE_URL."""

    def __init__(self, env: dict):
        import boto3

        _, _, rest = env["MACE_STORAGE_URL"].partition("s3://")
        self.name, _, self.prefix = rest.partition("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=env["MACE_S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.name, Key=self.key(key))
        except ClientError:
            return None

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=self.key(key))["Body"].read()

    def sha256(self, key: str) -> str:
        return hashlib.sha256(self.read(key)).hexdigest()

    def recreate(self) -> None:
        """After moto restarts (it keeps everything in memory), the bucket is there again."""
        from botocore.exceptions import ClientError

        try:
            self.client.create_bucket(Bucket=self.name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
