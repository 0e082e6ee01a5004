"""The embedded default (what `mace serve` runs with only MACE_DATA_DIR): SQLite, a local artifact
folder and kombu's filesystem broker, with a real worker process running a job end to end."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy import select

from app.catalog.models import Artifact
from app.queue import GENERATE_TASK
from app.serve import migrate
from app.settings import get_settings
from app.storage import sha256_of
from tests.service.worker_support import Catalog, WorkerProcess


def test_embedded_worker_runs_a_job_end_to_end(tmp_path, toy_model_dir, monkeypatch):
    env = {"MACE_DATA_DIR": str(tmp_path / "data")}
    catalog = Catalog(env)
    assert catalog.settings.database_url.startswith("sqlite") and catalog.settings.embedded_broker
    monkeypatch.setenv("MACE_DATA_DIR", env["MACE_DATA_DIR"])
    get_settings.cache_clear()
    try:
        migrate()  # what `mace serve` does first
    finally:
        get_settings.cache_clear()
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        base = catalog.register_base(toy_model_dir)
        job_id = catalog.submit(base, [("star",)])
        job = catalog.wait_final(job_id, 120)
        assert job.status == "succeeded", job.error
        assert job.progress == 1.0 and len(catalog.models_of_job(job_id)) == 1
        with catalog.session() as db:
            artifacts = {
                a.kind: a for a in db.scalars(select(Artifact).where(Artifact.model_id == job_id))
            }
        assert set(artifacts) == {"edit", "manifest", "lora-000"}
        artifact_root = tmp_path / "data" / "artifacts"
        for artifact in artifacts.values():
            path = Path(urlparse(artifact.uri).path)
            assert path.is_relative_to(artifact_root.resolve())
            assert sha256_of(path) == artifact.sha256 and path.stat().st_size == artifact.bytes

        result = catalog.celery.send_task(
            GENERATE_TASK,
            kwargs={
                "base": {"name": base.name, "source": base.source, "sha256": base.sha256},
                "edit": {
                    "key": f"models/{job_id}/edit.safetensors",
                    "sha256": artifacts["edit"].sha256,
                },
                "prompt": "a red star on a white background",
                "seed": 1,
                "num_inference_steps": 3,
            },
        ).get(timeout=120)
        assert base64.b64decode(result["images"][0]).startswith(b"\x89PNG\r\n\x1a\n")
    finally:
        worker.stop()
        catalog.dispose()
