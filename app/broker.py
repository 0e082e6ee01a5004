"""The broker as the API sees it: is it up, how long are the queues. Fast to fail by design,
so a broker outage makes requests answer (202 or 503) instead of hang."""

from __future__ import annotations

from functools import lru_cache

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.queue import QUEUES, get_celery
from app.settings import Settings, get_settings


def is_redis(settings: Settings) -> bool:
    """Whether the broker is Redis (queue depths and export markers need it)."""
    return bool(settings.BROKER_URL) and settings.BROKER_URL.startswith(("redis://", "rediss://"))


@lru_cache(maxsize=4)
def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def broker_redis(settings: Settings | None = None) -> redis.Redis | None:
    """A client of the broker's Redis, or None when the broker is not Redis."""
    settings = settings or get_settings()
    return _client(settings.BROKER_URL, settings.BROKER_TIMEOUT_S) if is_redis(settings) else None


def fast_connection_options(settings: Settings | None = None) -> dict:
    """Keyword arguments of `Celery.connection_for_write` for one quick attempt, no retries."""
    settings = settings or get_settings()
    timeout = settings.BROKER_TIMEOUT_S
    return {
        "connect_timeout": timeout,
        "transport_options": {"max_retries": 0, "socket_connect_timeout": timeout},
    }


def ping_broker(settings: Settings | None = None) -> None:
    """Raise when the broker cannot be reached within MACE_BROKER_TIMEOUT_S."""
    settings = settings or get_settings()
    client = broker_redis(settings)
    if client is not None:
        client.ping()
        return
    with get_celery().connection_for_write(**fast_connection_options(settings)) as conn:
        conn.ensure_connection(max_retries=0, timeout=settings.BROKER_TIMEOUT_S)


def queue_depths(settings: Settings | None = None) -> dict[str, int] | None:
    """Messages waiting per queue (erase, evaluate, generate); None unless the broker is Redis."""
    client = broker_redis(settings)
    if client is None:
        return None
    return {queue: int(client.llen(queue)) for queue in sorted(set(QUEUES.values()))}
