"""Chunk transitions (`app.catalog.chunks`) and the fan-out plan, on a SQLite catalog: a chunk
has one holder at a time, a silent holder's chunk is taken over, a done chunk stays done."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from app.catalog import chunks
from app.catalog.db import make_engine
from app.catalog.models import Base, BaseModel, ErasureChunk, ErasureJob, now
from app.settings import Settings
from worker.stage2_fanout import chunk_groups, fans_out

LEASE = timedelta(seconds=30)


@pytest.fixture
def db(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    Base.metadata.create_all(engine)
    with sessionmaker(bind=engine, expire_on_commit=False)() as session:
        session.add(BaseModel(id="b", name="b", source="s", sha256="0" * 64))
        session.add(ErasureJob(id="j", base_model_id="b", request={}, request_sha256="x"))
        session.commit()
        yield session
    engine.dispose()


def test_plan_is_made_once(db):
    planned = chunks.plan(db, "j", [[0, 1], [2, 3], [4]])
    assert [(c.number, c.groups, c.status) for c in planned] == [
        (0, [0, 1], "pending"),
        (1, [2, 3], "pending"),
        (2, [4], "pending"),
    ]
    again = chunks.plan(db, "j", [[0], [1], [2], [3], [4]])  # a later attempt keeps the first
    assert [c.groups for c in again] == [[0, 1], [2, 3], [4]]


def test_a_chunk_has_one_holder_until_it_goes_silent(db):
    chunks.plan(db, "j", [[0], [1]])
    held = chunks.claim(db, "j", 0, worker="a", lease=LEASE)
    assert held.worker == "a" and held.attempts == 1 and held.status == "running"
    assert chunks.claim(db, "j", 0, worker="b", lease=LEASE) is None
    assert chunks.claim_any(db, "j", worker="b", lease=LEASE).number == 1
    assert chunks.claim_any(db, "j", worker="c", lease=LEASE) is None
    assert chunks.heartbeat(db, "j", 0, worker="a", progress=0.5)
    assert not chunks.heartbeat(db, "j", 0, worker="b", progress=0.5)

    silent = now() - LEASE - timedelta(seconds=1)  # a's worker died
    db.execute(update(ErasureChunk).where(ErasureChunk.number == 0).values(heartbeat_at=silent))
    db.commit()
    taken = chunks.claim_any(db, "j", worker="c", lease=LEASE)
    assert (taken.number, taken.worker, taken.attempts) == (0, "c", 2)
    assert not chunks.heartbeat(db, "j", 0, worker="a", progress=0.6)  # a, if alive, stops
    assert not chunks.finish(db, "j", 0, worker="a")
    assert chunks.finish(db, "j", 0, worker="c")
    assert chunks.claim(db, "j", 0, worker="d", lease=LEASE) is None  # done stays done


def test_a_given_back_chunk_is_free_again(db):
    chunks.plan(db, "j", [[0]])
    chunks.claim(db, "j", 0, worker="a", lease=LEASE)
    assert not chunks.release(db, "j", 0, worker="b")
    assert chunks.release(db, "j", 0, worker="a")
    assert chunks.claim(db, "j", 0, worker="b", lease=LEASE).attempts == 2


def test_chunks_split_pending_groups_evenly():
    assert chunk_groups(list(range(6)), 2) == [[0, 1], [2, 3], [4, 5]]
    assert chunk_groups([1, 2, 4, 5, 7], 2) == [[1, 2], [4, 5], [7]]
    assert [len(c) for c in chunk_groups(list(range(70)), 32)] == [24, 23, 23]


def test_fan_out_only_beyond_one_chunk(db, monkeypatch):
    sessions = sessionmaker(bind=db.get_bind())
    monkeypatch.setattr("worker.stage2_fanout.session_factory", lambda: sessions)
    settings = Settings(STAGE2_CHUNK_GROUPS=2)
    stages = ("cfr", "lora", "fusion")
    assert not fans_out("j", stages, [0, 1], settings)
    assert fans_out("j", stages, [0, 1, 2], settings)
    assert not fans_out("j", ("cfr",), [0, 1, 2], settings)
    assert not fans_out("j", stages, [0, 1, 2], Settings(STAGE2_CHUNK_GROUPS=0))
    chunks.plan(db, "j", [[0, 1], [2]])  # an earlier attempt fanned out: this one does too
    assert fans_out("j", stages, [2], settings)
