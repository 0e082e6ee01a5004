"""The job row as an outbox: a submit while Redis is unreachable is accepted, and the job is sent
once the broker is back."""

from __future__ import annotations

import socket
import time

from app.catalog.db import session_factory
from app.dispatch import redispatch_pending
from app.queue import get_celery
from app.settings import get_settings
from tests.service.api_support import Api, broker, concept_body


def unreachable_redis_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there once the socket is closed


def point_broker(monkeypatch, url: str) -> None:
    monkeypatch.setenv("MACE_BROKER_URL", url)
    get_settings.cache_clear()
    get_celery.cache_clear()


def test_submit_with_redis_down_is_accepted_then_redispatched(api, api_env, monkeypatch):
    base = api.base_model()
    api.key("operator")
    broker().delete("erase")
    point_broker(monkeypatch, unreachable_redis_url())

    started = time.monotonic()
    response = api.post("/erasures", json=concept_body(base.name))
    assert time.monotonic() - started < 3  # the send fails fast instead of retrying
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    row = api.job(job_id)
    assert (row.status, row.dispatched) == ("queued", False)
    with session_factory()() as db:
        assert redispatch_pending(db, grace_s=0) == 0  # still down: nothing sent, nothing lost
    assert not api.job(job_id).dispatched

    point_broker(monkeypatch, api_env["MACE_BROKER_URL"])
    with session_factory()() as db:
        assert redispatch_pending(db, grace_s=0) >= 1
    assert api.job(job_id).dispatched
    assert broker().llen("erase") >= 1
    assert job_id.encode() in b"".join(broker().lrange("erase", 0, -1))


def test_grace_period_leaves_fresh_jobs_alone(api, monkeypatch):
    base = api.base_model()
    point_broker(monkeypatch, unreachable_redis_url())
    job_id = api.post("/erasures", json=concept_body(base.name)).json()["id"]
    with session_factory()() as db:
        assert redispatch_pending(db, grace_s=3600) == 0  # too fresh: its submit may still send
    assert not api.job(job_id).dispatched


def test_lifespan_loop_redispatches(api_env, monkeypatch):
    monkeypatch.setenv("MACE_DISPATCH_INTERVAL_S", "0.2")
    monkeypatch.setenv("MACE_DISPATCH_GRACE_S", "0")
    point_broker(monkeypatch, unreachable_redis_url())
    api = Api()
    base = api.base_model()
    job_id = api.post("/erasures", json=concept_body(base.name)).json()["id"]
    assert not api.job(job_id).dispatched
    with api.client:  # runs the lifespan, and with it the loop
        point_broker(monkeypatch, api_env["MACE_BROKER_URL"])
        deadline = time.monotonic() + 10
        while not api.job(job_id).dispatched and time.monotonic() < deadline:
            time.sleep(0.1)
    assert api.job(job_id).dispatched


def test_kept_broker_connection_recovers_after_the_server_drops_it(api):
    base = api.base_model()
    api.key("operator")
    redis = broker()
    redis.delete("erase")
    first = api.post("/erasures", json=concept_body(base.name)).json()["id"]
    assert api.job(first).dispatched
    own_id = redis.client_id()
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    clients = redis.client_list()
    dropped = [c["id"] for c in clients if c["db"] == str(db) and c["id"] != str(own_id)]
    assert dropped  # the API's kept connection, as after a broker restart
    for client_id in dropped:
        redis.client_kill_filter(_id=client_id)

    second = api.post("/erasures", json=concept_body(base.name, seed=2)).json()["id"]
    assert api.job(second).dispatched
    queued = b"".join(redis.lrange("erase", 0, -1))
    assert first.encode() in queued and second.encode() in queued


def test_a_stale_kept_connection_is_replaced_by_a_fresh_one(api_env):
    from app import dispatch

    redis = broker()
    redis.delete("erase")
    dispatch.send("mace.erase", queue="erase", args=["first"], task_id="first")
    kept = dispatch._thread_broker.connection
    # A connection that can no longer reach its server, as after the broker moved or restarted.
    stale = get_celery().connection_for_write(
        unreachable_redis_url(), connect_timeout=0.2, transport_options={"max_retries": 0}
    )
    dispatch._thread_broker.connection = stale
    dispatch.send("mace.erase", queue="erase", args=["second"], task_id="second")
    assert dispatch._thread_broker.connection not in (stale, None)
    assert dispatch._thread_broker.connection is not kept
    queued = b"".join(redis.lrange("erase", 0, -1))
    assert b"first" in queued and b"second" in queued
    redis.delete("erase")
