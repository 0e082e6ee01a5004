"""Faults on the production stack: a worker killed mid-job, S3 down during the upload, Postgres
restarted under an idle worker. Each ends with the job done exactly once, artifacts verified."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.artifacts import object_key
from app.catalog.models import Artifact
from tests.service.conftest import wait_for_port
from tests.service.worker_support import WorkerProcess
from worker.lora_checkpoints import checkpoint_key


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault-workers")


@pytest.fixture(scope="module")
def worker(service_env, logs):
    process = WorkerProcess(service_env, logs / "worker.log").start()
    yield process
    process.stop()


def poll(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def artifacts_verified(catalog, bucket, model_id) -> bool:
    with catalog.session() as db:
        artifacts = list(db.scalars(select(Artifact).where(Artifact.model_id == model_id)))
    kinds = {artifact.kind for artifact in artifacts}
    return {"edit", "manifest"} <= kinds and all(
        bucket.sha256(object_key(catalog.store, a.uri)) == a.sha256 for a in artifacts
    )


def test_killed_worker_job_resumes_without_retraining(
    request, catalog, bucket, base, service_env, logs
):
    doomed = WorkerProcess(service_env, logs / "doomed.log").start()
    try:
        # One group per pass: the LoRAs are stored one by one, so the kill falls between them.
        job_id = catalog.submit(
            base, [("cat",), ("dog",), ("car",)], lora_steps=60, concepts_per_pass=1
        )
        poll(lambda: bucket.head(checkpoint_key(job_id, 0)), 90, "no LoRA stored")
        doomed.kill()
    finally:
        doomed.stop()
    assert catalog.job(job_id).status == "running"
    assert bucket.head(checkpoint_key(job_id, 2)) is None, "the job ended before the kill"

    survivor = request.getfixturevalue("worker")  # started only now: the job must be taken over
    job = catalog.wait_final(job_id, 150)
    assert job.status == "succeeded", job.error
    assert job.attempts >= 2
    assert len(catalog.models_of_job(job_id)) == 1
    log = survivor.log()
    assert f"job {job_id}: resuming with stored LoRAs of groups [0" in log
    assert f"job {job_id}: stored the LoRA of group 0" not in log
    assert artifacts_verified(catalog, bucket, job_id)
    # The model's lora-NNN artifacts now hold the LoRAs: the checkpoints are gone.
    assert all(bucket.head(checkpoint_key(job_id, i)) is None for i in range(3))


def test_storage_outage_during_upload_is_retried(catalog, bucket, base, worker, s3_server):
    def never_succeeded_without_artifacts(job):
        if job.status == "succeeded":
            assert artifacts_verified(catalog, bucket, job.id)

    job_id = catalog.submit(base, [("boat",)])
    catalog.wait(job_id, lambda j: j.status == "running", 60)
    s3_server.stop()
    try:
        job = catalog.wait(
            job_id,
            lambda j: (
                j.status != "running" or (j.stage == "upload" and "retrying" in (j.error or ""))
            ),
            90,
        )
        assert job.status == "running", job.error
        assert catalog.models_of_job(job_id) == []
        time.sleep(2)  # down across more than one attempt
    finally:
        s3_server.start()
        bucket.recreate()
    job = catalog.wait_final(job_id, 90, watch=never_succeeded_without_artifacts)
    assert job.status == "succeeded", job.error
    assert job.error is None
    assert artifacts_verified(catalog, bucket, job_id)


def test_postgres_restart_under_an_idle_worker(catalog, base, worker):
    warm = catalog.submit(base, [("tree",)], lora_rank=0)  # fails at once, pools a connection
    assert catalog.wait_final(warm, 60).status == "failed"
    catalog.engine.dispose()
    version = subprocess.run(
        ["ls", "/etc/postgresql"], capture_output=True, text=True
    ).stdout.split()[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=60,
    )
    wait_for_port(5432)
    job_id = poll(lambda: _submit_when_up(catalog, base), 30, "Postgres did not come back")
    job = catalog.wait_final(job_id, 90)
    assert job.status == "succeeded", job.error
    with catalog.session() as db:
        assert (
            db.scalar(
                select(func.count())
                .select_from(Artifact)
                .where(Artifact.model_id == job_id, Artifact.kind == "edit")
            )
            == 1
        )


def _submit_when_up(catalog, base) -> str | None:
    from sqlalchemy.exc import OperationalError

    try:
        return catalog.submit(base, [("house",)])
    except OperationalError:
        return None
