"""What a worker process keeps between tasks: the store, warm pipelines and loaded edits.

Everything is built on first use, so importing the tasks loads no model.
"""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache

from app.settings import get_settings
from app.storage import make_store
from worker.edit_cache import EditCache
from worker.pipeline_cache import PipelineCache
from worker.storage_retry import with_storage_retries


@lru_cache
def store():
    return make_store(get_settings())


@lru_cache
def pipelines() -> PipelineCache:
    return PipelineCache(get_settings().PIPELINE_CACHE_SIZE)


@lru_cache
def edits() -> EditCache:
    settings = get_settings()
    settings.edit_cache_folder.mkdir(parents=True, exist_ok=True)
    return EditCache(settings.edit_cache_folder, settings.EDIT_CACHE_SIZE, download)


def download(key: str, path, sha256: str | None):
    """Fetch an artifact, checked against its recorded sha256, retrying a store that is down."""
    settings = get_settings()
    return with_storage_retries(
        lambda: store().get_file(key, path, sha256),
        what=f"download of {key}",
        attempts=settings.STORAGE_ATTEMPTS,
        backoff_s=settings.STORAGE_BACKOFF_S,
    )


def worker_name() -> str:
    """Who owns a job while this task runs: host, process and a per-run suffix, so a second
    delivery of the same job to this process is never mistaken for the running one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
