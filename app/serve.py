"""`mace serve` (the API and a worker on one machine) and `mace worker` (a worker alone).

With only MACE_DATA_DIR set, `mace serve` is the whole service on a laptop: SQLite, a local
artifact folder and kombu's filesystem broker, all under the data folder.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ALL_QUEUES = "erase,evaluate,generate"
ROOT = Path(__file__).resolve().parents[1]


def add_service_commands(sub) -> None:
    """The `serve` and `worker` subcommands of `mace`."""
    p = sub.add_parser("serve", help="run the API and a worker on this machine")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--separate-generate-worker",
        action="store_true",
        help="a second worker process for image generation, so images do not wait "
        "behind a running erasure (holds a second copy of the model in memory)",
    )
    p.set_defaults(handler=serve)

    p = sub.add_parser(
        "migrate", help="bring the catalog's schema up to date (alembic upgrade head)"
    )
    p.set_defaults(handler=lambda args: migrate() or 0)

    p = sub.add_parser("api", help="run the API alone (production: workers run elsewhere)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="API processes (default 2: requests queue behind one Python process's lock well "
        "before its core is busy; each keeps up to MACE_DB_POOL_SIZE catalog connections)",
    )
    p.set_defaults(handler=api)

    p = sub.add_parser("worker", help="run a Celery worker for erasure, evaluation and images")
    p.add_argument("-Q", "--queues", default=ALL_QUEUES, help=f"queues (default {ALL_QUEUES})")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="tasks at a time (default 1: one worker process per GPU)",
    )
    p.add_argument(
        "--pool",
        choices=["solo", "threads", "prefork"],
        help="Celery pool (default: solo for one task at a time, else threads)",
    )
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(handler=worker)


def worker_command(
    queues: str = ALL_QUEUES, concurrency: int = 1, pool: str | None = None, loglevel: str = "INFO"
) -> list[str]:
    """The `celery worker` command line of a MACE worker."""
    pool = pool or ("solo" if concurrency == 1 else "threads")
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_worker",
        "worker",
        "-Q",
        queues,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
    ]


def worker(args) -> int:
    """Replace this process by the Celery worker, so signals reach it directly."""
    command = worker_command(args.queues, args.concurrency, args.pool, args.loglevel)
    os.execv(command[0], command)
    return 0  # not reached


def migrate() -> None:
    """`alembic upgrade head` on the configured database."""
    from alembic import command
    from alembic.config import Config

    from app.settings import get_settings

    settings = get_settings()
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = settings.database_url
    command.upgrade(config, "head")


def api(args) -> int:
    """The API server alone; the schema is migrated by a separate step (`alembic upgrade head`)."""
    import uvicorn

    uvicorn.run(
        "app.api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
    )
    return 0


def serve(args) -> int:
    """Migrate, start the worker(s), then run the API until interrupted; the workers stop too."""
    if importlib.util.find_spec("app.api.main") is None:
        sys.exit("mace serve: the API (app.api.main) is not installed")
    import uvicorn

    migrate()
    if args.separate_generate_worker:
        commands = [worker_command("erase,evaluate"), worker_command("generate")]
    else:
        commands = [worker_command(ALL_QUEUES)]
    workers = [subprocess.Popen(command) for command in commands]
    try:
        uvicorn.run("app.api.main:create_app", factory=True, host=args.host, port=args.port)
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0
