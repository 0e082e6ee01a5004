"""`/ready`, `/metrics` and the API's behaviour through database and broker outages."""

from __future__ import annotations

import re
import socket

from sqlalchemy import create_engine, func, select, text

from app.api.deps import get_store
from app.catalog.db import get_engine, session_factory
from app.catalog.models import ErasureJob
from app.queue import get_celery
from app.settings import get_settings
from tests.service.api_support import broker, concept_body


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ready_when_everything_answers(api):
    assert api.client.get("/ready").status_code == 401
    response = api.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_ready_names_the_failing_dependency(api, monkeypatch):
    api.key("viewer")
    monkeypatch.setenv("MACE_BROKER_URL", f"redis://127.0.0.1:{closed_port()}/0")
    monkeypatch.setenv("MACE_STORAGE_URL", "s3://no-such-bucket/artifacts")
    get_settings.cache_clear()
    get_celery.cache_clear()
    get_store.cache_clear()
    response = api.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error") and "broker" in body["detail"]
    assert body["checks"]["storage"].startswith("error") and "storage" in body["detail"]


def test_metrics_report_jobs_queues_and_stages(api):
    assert api.client.get("/metrics").status_code == 401
    base = api.base_model()
    broker().delete("erase")
    api.post("/erasures", json=concept_body(base.name))
    api.erased_model(base, stage_timings={"cfr": 2.5, "lora": 40.0})
    with session_factory()() as db:
        queued = db.scalar(select(func.count()).where(ErasureJob.status == "queued"))
    metrics = api.get("/metrics").text
    assert f'mace_jobs{{status="queued"}} {float(queued)}' in metrics
    assert 'mace_jobs{status="running"}' in metrics
    assert 'mace_queue_depth{queue="erase"} 1.0' in metrics
    assert 'mace_queue_depth{queue="generate"}' in metrics
    assert re.search(r'mace_stage_duration_seconds_bucket\{le="5",stage="cfr"\} [1-9]', metrics)
    assert "mace_generate_seconds_bucket" in metrics


def test_database_outage_is_a_503_and_the_api_recovers(api, api_env, monkeypatch):
    base = api.base_model()
    assert api.get("/erasures").status_code == 200
    # Every server-side connection dies, as in a restart: pre-ping replaces them unnoticed.
    admin = create_engine(api_env["MACE_DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text("""SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                    WHERE datname = current_database() AND pid <> pg_backend_pid()""")
        )
    admin.dispose()
    assert api.get("/erasures").status_code == 200
    assert api.post("/erasures", json=concept_body(base.name)).status_code == 202

    # While the database is unreachable, requests get a clear 503, not a traceback.
    url = api_env["MACE_DATABASE_URL"].replace("127.0.0.1:5432", f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MACE_DATABASE_URL", url)
    get_settings.cache_clear()
    get_engine().dispose()
    get_engine.cache_clear()
    session_factory.cache_clear()
    down = api.get("/erasures")
    assert down.status_code == 503 and down.json() == {"detail": "database unavailable"}
    assert api.client.get("/health").status_code == 200


def test_api_imports_no_engine_code():
    """The API process must start without torch: app/ never imports the engine."""
    code = (
        "import sys, app.api.main, app.catalog_commands, app.cli; app.cli.build_parser(); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'worker')); print(heavy); assert not heavy"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_openapi_is_public(api):
    assert api.client.get("/docs").status_code == 200
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {"/erasures", "/generate", "/prompt-sets", "/models/{model_id}/artifacts/{kind}"} <= set(
        paths
    )
