"""Enqueueing work after the commit, with the job row as the outbox.

A submitted job is committed first (status queued, dispatched false), then sent to the broker
and marked dispatched. When the broker is down the job is still accepted; the API's re-dispatch
loop sends it once the broker is back. A message sent twice is harmless: the worker's claim is a
conditional update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from datetime import timedelta

from celery.result import AsyncResult
from sqlalchemy.orm import Session

from app.broker import broker_redis, fast_connection_options
from app.catalog import jobs
from app.catalog.db import session_factory
from app.catalog.models import ErasureJob, EvaluationJob, now
from app.queue import ERASE_TASK, EVALUATE_TASK, EXPORT_TASK, QUEUES, get_celery
from app.settings import get_settings

logger = logging.getLogger(__name__)


def send(
    name: str,
    *,
    queue: str,
    args: list | None = None,
    kwargs: dict | None = None,
    task_id: str | None = None,
    keep_result: bool = False,
) -> AsyncResult:
    """Publish one task with a single quick connection attempt; raises if the broker is down.

    Args:
        name: the task name (`mace.erase`, ...).
        queue: the queue it goes to.
        args: positional arguments of the task.
        kwargs: keyword arguments of the task.
        task_id: the Celery task id (a job's id, so a duplicate is recognisable).
        keep_result: whether the caller will wait for the result (subscribes to it first).
    """
    celery = get_celery()
    options = {
        "args": args,
        "kwargs": kwargs,
        "task_id": task_id,
        "queue": queue,
        "retry": False,
        "ignore_result": not keep_result,
    }
    cached = getattr(_thread_broker, "connection", None)
    if cached is not None and getattr(_thread_broker, "app", None) is not celery:
        _drop_thread_connection()  # settings changed since (a new Celery app): not this broker
        cached = None
    if cached is not None:
        try:
            return celery.send_task(name, connection=cached, **options)
        except Exception:  # a broker restart leaves it stale: one fresh attempt below
            _drop_thread_connection()
    connection = celery.connection_for_write(**fast_connection_options())
    try:
        result = celery.send_task(name, connection=connection, **options)
    except Exception:
        _release(connection)
        raise
    _thread_broker.app, _thread_broker.connection = celery, connection
    return result


# One broker connection per request thread, kept between requests: opening one (connect, ping,
# declare the queue) costs more than the publish itself. Ours rather than the producer pool's,
# whose connections retry for seconds: a request must not hang on a broker outage.
_thread_broker = threading.local()


def _drop_thread_connection() -> None:
    connection = getattr(_thread_broker, "connection", None)
    _thread_broker.connection = None
    if connection is not None:
        _release(connection)


def _release(connection) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may raise again
        connection.release()


def send_erasure(job_id: str) -> bool:
    """Send a committed erasure job's message; False (and a warning) when the broker is down."""
    return _send_job(ERASE_TASK, job_id)


def send_evaluation(job_id: str) -> bool:
    """Send a committed evaluation job's message; False when the broker is down."""
    return _send_job(EVALUATE_TASK, job_id)


def _send_job(task: str, job_id: str) -> bool:
    try:
        send(task, queue=QUEUES[task], args=[job_id], task_id=job_id)
    except Exception as exc:  # kombu, redis and socket errors alike: the row stays in the outbox
        logger.warning("job %s not dispatched, the broker is unreachable: %s", job_id, exc)
        return False
    return True


# Each job table with the task that runs its jobs.
JOB_TASKS = ((ErasureJob, ERASE_TASK), (EvaluationJob, EVALUATE_TASK))


def redispatch_pending(db: Session, *, grace_s: float) -> int:
    """Send queued jobs whose message never reached the broker; returns how many were sent.

    Args:
        db: the catalog session.
        grace_s: only jobs older than this, so a submit still dispatching itself is left alone.
    """
    sent = 0
    for table, task in JOB_TASKS:
        for job_id in jobs.undispatched(db, now() - timedelta(seconds=grace_s), table=table):
            if not _send_job(task, job_id):
                return sent  # still down: the next pass tries again
            jobs.mark_dispatched(db, job_id, table=table)
            sent += 1
    if sent:
        logger.info("re-dispatched %d job(s)", sent)
    return sent


def redispatch_once() -> int:
    """One re-dispatch pass with its own session."""
    with session_factory()() as db:
        return redispatch_pending(db, grace_s=get_settings().DISPATCH_GRACE_S)


async def redispatch_loop(interval_s: float) -> None:
    """Re-dispatch every `interval_s` until cancelled (started by the API's lifespan)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(redispatch_once)
        except Exception:  # a database outage: log it and try again next round
            logger.exception("re-dispatch pass failed")


def export_task_id(model_id: str, kind: str) -> str:
    """The deterministic Celery id of an export, so its outcome can be looked up."""
    return f"export-{model_id}-{kind}"


def request_export(model_id: str, kind: str) -> str | None:
    """Enqueue `mace.export` unless it is already pending; returns the last export's error.

    With a Redis broker a marker (`mace:export-pending:<model>:<kind>`, expiring after
    MACE_EXPORT_PENDING_TTL_S) keeps repeated downloads from enqueueing the export again, and
    when the previous attempt failed its error is returned and the next call tries again.
    Without Redis every call sends the task; the worker returns an export it already has.
    """
    settings = get_settings()
    task_id = export_task_id(model_id, kind)
    client = broker_redis(settings)
    marker = f"mace:export-pending:{model_id}:{kind}"
    if client is not None:
        if not client.set(marker, 1, nx=True, ex=settings.EXPORT_PENDING_TTL_S):
            previous = AsyncResult(task_id, app=get_celery())
            if previous.state != "FAILURE":
                return None
            error = str(previous.result)
            previous.forget()
            client.delete(marker)
            return error or "the export failed"
        # A failure recorded by an earlier attempt must not be mistaken for this one's.
        with contextlib.suppress(OSError):  # a file result backend has nothing to delete
            AsyncResult(task_id, app=get_celery()).forget()
    try:
        send(EXPORT_TASK, queue=QUEUES[EXPORT_TASK], args=[model_id, kind], task_id=task_id)
    except Exception:
        if client is not None:
            client.delete(marker)
        raise
    return None
