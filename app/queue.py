"""The Celery application both sides share: the API enqueues by task name, workers register them.

This module never imports torch; the task bodies live in `worker.tasks`.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.settings import Settings, get_settings

ERASE_TASK = "mace.erase"
ERASE_CHUNK_TASK = "mace.erase_chunk"  # one chunk of a fanned-out job's stage 2
EVALUATE_TASK = "mace.evaluate"
GENERATE_TASK = "mace.generate"
EXPORT_TASK = "mace.export"
QUEUES = {
    ERASE_TASK: "erase",
    ERASE_CHUNK_TASK: "erase",
    EVALUATE_TASK: "evaluate",
    GENERATE_TASK: "generate",
    EXPORT_TASK: "erase",  # exports are heavy model work, like erasures
}


def _broker(settings: Settings) -> tuple[str, dict]:
    options = {"visibility_timeout": settings.VISIBILITY_TIMEOUT_S}
    if not settings.embedded_broker:
        return settings.BROKER_URL, options
    folder = settings.broker_folder
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport: a real broker with no server, for the embedded default.
    options.update(
        data_folder_in=str(folder / "queue"),
        data_folder_out=str(folder / "queue"),
        processed_folder=str(folder / "processed"),
        control_folder=str(folder / "control"),
        store_processed=False,
    )
    return "filesystem://", options


def _result_backend(settings: Settings) -> str:
    if settings.RESULT_BACKEND_URL:
        return settings.RESULT_BACKEND_URL
    if settings.BROKER_URL and settings.BROKER_URL.startswith("redis"):
        return settings.BROKER_URL
    folder = (settings.DATA_DIR / "results").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker, transport_options = _broker(settings)
    celery = Celery("mace", broker=broker, backend=_result_backend(settings))
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_routes={name: {"queue": queue} for name, queue in QUEUES.items()},
        task_default_queue="erase",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        task_track_started=False,
        worker_hijack_root_logger=False,
    )
    return celery


@lru_cache
def get_celery() -> Celery:
    return make_celery()
