"""`mace serve` with only MACE_DATA_DIR: the API and its worker on SQLite, a local artifact folder
and the filesystem broker, driven over HTTP from submit to download."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy.orm import sessionmaker

from app.catalog.api_keys import create_api_key
from app.catalog.base_models import register_base_model
from app.catalog.db import make_engine
from tests.service.conftest import free_port, wait_for_port
from tests.service.worker_support import ROOT, WORKER_ENV, settings_of
from worker.erasure.base_model import model_identity


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_serve_runs_the_api_and_a_worker_end_to_end(tmp_path, tiny_model_dir):
    env = {**os.environ, **WORKER_ENV, "MACE_DATA_DIR": str(tmp_path / "data")}
    env = {k: v for k, v in env.items() if k not in ("MACE_DATABASE_URL", "MACE_BROKER_URL")}
    port = free_port()
    with open(tmp_path / "serve.log", "ab") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_for_port(port, timeout=90)  # migrated first, so the catalog is there
        engine = make_engine(settings_of(env).database_url)
        with sessionmaker(bind=engine)() as db:
            identity = model_identity(str(tiny_model_dir))
            register_base_model(db, name="tiny", source=str(tiny_model_dir), sha256=identity.sha256)
            _, key = create_api_key(db, role="operator", name="serve test")
        engine.dispose()
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
        )
        body = {"base_model": "tiny", "concepts": ["cat"], "images_per_concept": 2,
                "image_steps": 4, "lora_steps": 3}  # fmt: skip
        submitted = client.post("/erasures", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/erasures/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job["status"] == "succeeded", job
        model = client.get(f"/models/{job['model_id']}").json()
        edit = next(a for a in model["artifacts"] if a["kind"] == "edit")
        download = client.get(f"/models/{job['model_id']}/artifacts/edit")
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == edit["sha256"]
        client.close()
        workers = _children(serve.pid)
        assert workers, "mace serve started no worker"
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)
    assert all(_gone(pid) for pid in workers), "the worker outlived mace serve"
