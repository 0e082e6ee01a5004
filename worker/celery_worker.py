"""The worker's entry point: `celery -A worker.celery_worker worker -Q erase,evaluate,generate`.

It is the Celery app of `app.queue` with the tasks of `worker.tasks` registered on it.
"""

from __future__ import annotations

import logging

from celery import signals

from app.queue import get_celery
from app.settings import get_settings

app = get_celery()


def _recover_unacked_promptly(settings) -> None:
    """A message whose worker died is redelivered once the visibility timeout has passed; kombu's
    Redis transport only looks every interval x throttle (100 s) by default, so look at a quarter
    of the timeout (at most every 10 s) instead."""
    if settings.BROKER_URL and settings.BROKER_URL.startswith("redis"):
        interval = max(1, min(10, settings.VISIBILITY_TIMEOUT_S // 4))
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "unacked_restore_interval": interval,
            "unacked_restore_throttle": 1,
        }


@signals.setup_logging.connect
def _configure_logging(loglevel=None, **_) -> None:
    logging.basicConfig(
        level=loglevel or logging.INFO,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )


_recover_unacked_promptly(get_settings())

import worker.tasks  # noqa: E402,F401  (registers the tasks on `app`)
