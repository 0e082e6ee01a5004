"""Real services for the service tests: a fresh Postgres database migrated by Alembic, Redis, and
moto's S3 server on loopback. Nothing is skipped: a missing service fails the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "MACE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_DB = int(os.environ.get("MACE_TEST_REDIS_DB", "13"))
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def postgres_url():
    """A new database on the local Postgres, migrated with `alembic upgrade head`, dropped after."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    name = f"mace_test_{uuid.uuid4().hex[:10]}"
    # pool_pre_ping: test_faults restarts Postgres; the teardown must not get a dead connection.
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")
    yield url
    with admin.connect() as conn:
        conn.execute(
            text(f"""SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                              WHERE datname = '{name}' AND pid <> pg_backend_pid()""")
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url():
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    client.ping()
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    client.flushdb()


class MotoServer:
    """moto's S3 server in its own process, on a loopback port; can be stopped and restarted."""

    def __init__(self):
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="session")
def s3_server():
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_env(tmp_path_factory, postgres_url, redis_url, s3_server):
    """MACE_* settings for the production stack on the local services (loopback only)."""
    data_dir = tmp_path_factory.mktemp("mace-data")
    bucket = f"mace-{uuid.uuid4().hex[:8]}"
    env = {
        "MACE_DATA_DIR": str(data_dir),
        "MACE_DATABASE_URL": postgres_url,
        "MACE_BROKER_URL": redis_url,
        "MACE_STORAGE_URL": f"s3://{bucket}/artifacts",
        "MACE_S3_ENDPOINT_URL": s3_server.endpoint,
        "MACE_S3_ACCESS_KEY_ID": "testing",
        "MACE_S3_SECRET_ACCESS_KEY": "testing",
        "MACE_VISIBILITY_TIMEOUT_S": "20",
        "MACE_CACHE_DIR": str(data_dir / "cache"),
    }
    assert env["MACE_S3_ENDPOINT_URL"].startswith("http://127.0.0.1:"), (
        "S3 tests only run on loopback"
    )
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    return env


def reset_service_caches() -> None:
    """Forget the process-wide objects built from MACE_* (settings, engine, Celery app, store),
    so the next use builds them from the current environment."""
    from app.api.deps import get_store
    from app.catalog.db import get_engine, session_factory
    from app.queue import get_celery
    from app.settings import get_settings

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    for cache in (get_settings, get_engine, session_factory, get_celery, get_store):
        cache.cache_clear()


@pytest.fixture
def api_env(monkeypatch, service_env):
    """`service_env` in os.environ for an API in this process (re-dispatch loop off). Afterwards,
    jobs the API left queued are cancelled and the queues emptied, so no later worker runs them."""
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MACE_DISPATCH_INTERVAL_S", "0")
    reset_service_caches()
    yield service_env
    from sqlalchemy import create_engine, text

    engine = create_engine(service_env["MACE_DATABASE_URL"])
    with engine.begin() as conn:
        for table in ("erasure_jobs", "evaluation_jobs"):
            conn.execute(
                text(f"""UPDATE {table} SET status = 'cancelled', cancel_requested = true
                         WHERE status IN ('queued', 'running') AND api_key_id IS NOT NULL""")
            )
    engine.dispose()
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    client.delete("erase", "generate", "evaluate", *client.keys("mace:export-pending:*"))
    reset_service_caches()


@pytest.fixture
def api(api_env):
    """An `Api` (tests/service/api_support.py): the app on the test services, keys per role."""
    from tests.service.api_support import Api

    api = Api()
    yield api
    api.client.close()


# Worker tests: the catalog, the bucket and the registered tiny model, per test module.
@pytest.fixture(scope="module")
def catalog(service_env):
    from tests.service.worker_support import Catalog

    catalog = Catalog(service_env)
    yield catalog
    catalog.dispose()


@pytest.fixture(scope="module")
def bucket(service_env):
    from tests.service.worker_support import Bucket

    return Bucket(service_env)


@pytest.fixture(scope="module")
def base(catalog, toy_model_dir):
    return catalog.register_base(toy_model_dir)
