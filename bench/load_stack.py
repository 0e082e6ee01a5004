"""The production stack on loopback for `bench/api_load.py`, built and torn down in one place.

A fresh Postgres database migrated by Alembic (`app.serve.migrate`), a Redis db of its own as
broker and result backend, a local artifact folder, uvicorn serving `app.api.main:create_app` and
one Celery worker on the `generate` queue only. The operator key and the tiny base model are
created through the same service functions `mace keys create` and `mace base-models add` use.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _loopback_only(url: str) -> None:
    if "@127.0.0.1:" not in url and "//127.0.0.1:" not in url:
        raise SystemExit(f"refusing a service that is not on 127.0.0.1: {url}")


class LoadStack:
    """Everything the benchmark talks to; `start()` then `stop()` (safe to call twice)."""

    def __init__(
        self,
        *,
        postgres_admin_url: str,
        redis_db: int,
        uvicorn_workers: int,
        torch_threads: int,
        base_model_name: str = "tiny",
        app_factory: str = "app.api.main:create_app",
    ):
        _loopback_only(postgres_admin_url)
        self.postgres_admin_url = postgres_admin_url
        self.redis_db = redis_db
        self.uvicorn_workers = uvicorn_workers
        self.torch_threads = torch_threads
        self.base_model_name = base_model_name
        self.app_factory = app_factory
        self.database = f"mace_bench_{uuid.uuid4().hex[:10]}"
        self.database_url = postgres_admin_url.rsplit("/", 1)[0] + f"/{self.database}"
        self.redis_url = f"redis://{HOST}:6379/{redis_db}"
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="mace-bench-"))
        self.model_dir = self.folder / "tiny-model"
        self.api_key: str | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self._database_created = False
        self._redis_touched = False

    # -- environment -------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """MACE_* of the API and the worker: the production stack on loopback."""
        return {
            "MACE_DATA_DIR": str(self.folder / "data"),
            "MACE_DATABASE_URL": self.database_url,
            "MACE_BROKER_URL": self.redis_url,
            "MACE_STORAGE_URL": (self.folder / "artifacts").as_uri(),
        }

    def child_env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.env,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": str(self.torch_threads),
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, log=print) -> LoadStack:
        (self.folder / "artifacts").mkdir(parents=True, exist_ok=True)
        self._create_database()
        self._flush_redis()
        os.environ.update(self.env)  # `migrate` and the catalog functions read MACE_*
        _reset_settings_caches()
        from app.serve import migrate

        migrate()
        log(f"database {self.database} migrated; redis db {self.redis_db} flushed")
        self._register_base_model_and_key()
        log(f"tiny model saved and registered as {self.base_model_name!r}; operator key made")
        self._start_worker()
        log("celery worker (queue: generate) ready")
        self._start_api()
        log(f"uvicorn ({self.uvicorn_workers} worker(s)) on {self.base_url}")
        return self

    def stop(self) -> None:
        for name in ("api", "worker"):
            process = self.processes.pop(name, None)
            if process is not None:
                _stop_group(process)
        _dispose_engine()
        if self._database_created:
            self._drop_database()
        if self._redis_touched:
            self._flush_redis()
        for name in self.env:
            os.environ.pop(name, None)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LoadStack:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    # -- pieces ------------------------------------------------------------------------------

    def _admin_engine(self):
        from sqlalchemy import create_engine

        return create_engine(self.postgres_admin_url, isolation_level="AUTOCOMMIT")

    def _create_database(self) -> None:
        from sqlalchemy import text

        admin = self._admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        admin.dispose()
        self._database_created = True

    def _drop_database(self) -> None:
        from sqlalchemy import text

        admin = self._admin_engine()
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": self.database},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}"'))
        admin.dispose()
        self._database_created = False

    def _flush_redis(self) -> None:
        import redis

        client = redis.Redis(host=HOST, port=6379, db=self.redis_db)
        client.flushdb()
        client.close()
        self._redis_touched = True

    def _register_base_model_and_key(self) -> None:
        from app.catalog.api_keys import create_api_key
        from app.catalog.base_models import register_base_model
        from app.catalog.db import session_factory
        from app.settings import get_settings
        from worker.erasure.base_model import model_identity
        from worker.erasure.tiny_model import save_tiny_model

        save_tiny_model(self.model_dir)
        identity = model_identity(str(self.model_dir))
        with session_factory()() as db:
            register_base_model(
                db, name=self.base_model_name, source=str(self.model_dir), sha256=identity.sha256
            )
            _, self.api_key = create_api_key(
                db, role="operator", name="api-load bench", pepper=get_settings().API_KEY_PEPPER
            )
        _dispose_engine()

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one, children included
        )
        log.close()
        self.processes[name] = process
        return process

    def log_of(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cpu_seconds(self, name: str) -> float | None:
        """User + system CPU of the process group `name` (its children included); Linux only."""
        process = self.processes.get(name)
        if process is None:
            return None
        return sum(cpu for _pid, group, cpu in _process_cpu() if group == process.pid)

    def postgres_sessions(self) -> int | None:
        """Sessions opened on the benchmark's database so far (pg_stat_database, PostgreSQL 14+)."""
        from sqlalchemy import text

        admin = self._admin_engine()
        try:
            with admin.connect() as conn:
                return conn.execute(
                    text("SELECT sessions FROM pg_stat_database WHERE datname = :name"),
                    {"name": self.database},
                ).scalar()
        except Exception:  # an older server without the column: not reported
            return None
        finally:
            admin.dispose()

    def _start_worker(self, timeout: float = 120.0) -> None:
        from app.serve import worker_command

        command = worker_command("generate") + [
            "--without-heartbeat", "--without-mingle", "--without-gossip",
            "-n", f"bench-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        process = self._spawn("worker", command)
        self._wait(lambda: " ready." in self.log_of("worker"), process, "worker", timeout)

    def _start_api(self, timeout: float = 60.0) -> None:
        import httpx

        command = [
            sys.executable, "-m", "uvicorn", self.app_factory, "--factory",
            "--host", HOST, "--port", str(self.port),
            "--workers", str(self.uvicorn_workers),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        process = self._spawn("api", command)

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait(healthy, process, "api", timeout)
        if self.uvicorn_workers > 1:
            time.sleep(2.0)  # every worker process has started its application, not only one

    def _wait(self, ready, process: subprocess.Popen, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({process.returncode}):\n{self.log_of(name)[-3000:]}"
                )
            time.sleep(0.2)
        raise TimeoutError(f"{name} not ready after {timeout}s:\n{self.log_of(name)[-3000:]}")


def _process_table() -> list[dict]:
    """pid, ppid, process group, name, own and reaped children's CPU seconds of every process;
    empty off Linux."""
    if not Path("/proc/stat").exists():
        return []
    tick = os.sysconf("SC_CLK_TCK")
    rows = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue  # exited meanwhile
        fields = tail.split()
        rows.append(
            {
                "pid": int(stat.parent.name),
                "name": head.split("(", 1)[1],
                "ppid": int(fields[1]),
                "group": int(fields[2]),
                "cpu": (int(fields[11]) + int(fields[12])) / tick,
                "children_cpu": (int(fields[13]) + int(fields[14])) / tick,
            }
        )
    return rows


def _process_cpu() -> list[tuple[int, int, float]]:
    """(pid, process group, user + system CPU seconds) of every process."""
    return [(row["pid"], row["group"], row["cpu"]) for row in _process_table()]


def server_cpu_seconds(name: str) -> float | None:
    """CPU seconds of every process called `name` (postgres, redis-server), the exited ones its
    top process has reaped included (a closed Postgres session's backend); None off Linux.
    These servers are shared: other databases' work on them counts too."""
    rows = _process_table()
    if not rows:
        return None
    named = {row["pid"]: row for row in rows if row["name"] == name}
    total = 0.0
    for row in named.values():
        total += row["cpu"]
        if row["ppid"] not in named:  # the postmaster: its exited backends' CPU too
            total += row["children_cpu"]
    return total


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent not idle since boot (/proc/stat); None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _stop_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the process group this benchmark started, SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass


def _reset_settings_caches() -> None:
    from app.catalog.db import get_engine, session_factory
    from app.settings import get_settings

    _dispose_engine()
    for cache in (get_settings, get_engine, session_factory):
        cache.cache_clear()


def _dispose_engine() -> None:
    from app.catalog.db import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose()
