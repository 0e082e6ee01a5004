"""Artifact storage calls retried with a doubling backoff, for a store that is briefly down."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from app.storage import StorageError

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 60.0


def with_storage_retries(
    action: Callable[[], T],
    *,
    what: str,
    attempts: int,
    backoff_s: float,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """`action()`, tried `attempts` times while it raises `StorageError`; the last error is raised.

    Args:
        action: the storage call.
        what: what is being stored or fetched, for messages.
        attempts: how many times to try (>= 1).
        backoff_s: the first wait between attempts; it doubles, up to a minute.
        on_retry: called with a readable message before each wait.
    """
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except StorageError as exc:
            if attempt == attempts:
                raise StorageError(f"{what}: gave up after {attempts} attempts: {exc}") from exc
            delay = min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
            message = f"{what}: attempt {attempt}/{attempts} failed ({exc}); retrying in {delay:g}s"
            logger.warning(message)
            if on_retry:
                on_retry(message)
            time.sleep(delay)
    raise AssertionError("unreachable")
