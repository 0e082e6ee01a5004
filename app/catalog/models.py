"""The catalog: base and erased models with lineage, artifacts, jobs, keys, prompt sets."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON}


class BaseModel(Base):
    """A model registered by an admin; its source is a server-side path or cached HF id."""

    __tablename__ = "base_models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ErasedModel(Base):
    """The result of a succeeded erasure; lineage points at its base and at its parent, if any."""

    __tablename__ = "erased_models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    base_model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    parent_model_id: Mapped[str | None] = mapped_column(ForeignKey("erased_models.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("erasure_jobs.id"), unique=True)
    concepts: Mapped[list] = mapped_column(JSON)
    options: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    base_model: Mapped[BaseModel] = relationship()
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="model", order_by="Artifact.kind"
    )
    metrics: Mapped[list[Metric]] = relationship(back_populates="model")


class Artifact(Base):
    """A stored file of an erased model (the edit, a group's LoRA, an export)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("model_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("erased_models.id"))
    kind: Mapped[str] = mapped_column(String(100))
    uri: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    model: Mapped[ErasedModel] = relationship(back_populates="artifacts")


class Metric(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("erased_models.id"))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    evaluation_id: Mapped[str | None] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    model: Mapped[ErasedModel] = relationship(back_populates="metrics")


class JobState:
    """The columns every job row shares: status, progress, the worker's lease, timestamps.

    The row is the source of truth for a job's status and progress (Celery's result backend is
    not); `app.catalog.jobs` moves it from state to state with conditional updates."""

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage_timings: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    request: Mapped[dict] = mapped_column(JSON)
    request_sha256: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class ErasureJob(JobState, Base):
    """An erasure request; its erased model, once it succeeded, has the job's id."""

    __tablename__ = "erasure_jobs"

    base_model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    parent_model_id: Mapped[str | None] = mapped_column(String(32))  # no FK: models point at jobs
    model_id: Mapped[str | None] = mapped_column(String(32))


class ErasureChunk(Base):
    """A share of a fanned-out erasure job's stage 2: some of its groups' LoRAs, trained by any
    worker on the `erase` queue that claims it (`app.catalog.chunks`). Kept after the job ends as
    the record of who trained what."""

    __tablename__ = "erasure_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("erasure_jobs.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    groups: Mapped[list] = mapped_column(JSON)  # indices into the job's concept groups
    status: Mapped[str] = mapped_column(String(16), default="pending")  # running, done
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))  # the claimant; who finished it
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EvaluationJob(JobState, Base):
    """An evaluation of one or more catalogued models; its report is stored as artifacts."""

    __tablename__ = "evaluation_jobs"

    report: Mapped[dict | None] = mapped_column(JSON)  # the metrics per model, once succeeded
    artifacts: Mapped[dict] = mapped_column(JSON, default=dict)  # name -> {uri, bytes, sha256}


class ApiKey(Base):
    """An API key, stored as a hash; the secret is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PromptSet(Base):
    """Uploaded prompts, for preservation and evaluation."""

    __tablename__ = "prompt_sets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(32), default="preservation")
    prompts: Mapped[list] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
