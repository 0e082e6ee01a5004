"""Erased models with their lineage, artifacts and metrics."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, computed_field

EXPORT_KINDS = ("diffusers", "unet-pt", "lora", "lora-kohya")
ARTIFACT_KIND_PATTERN = r"^(edit|manifest|lora-\d{3}|diffusers|unet-pt|lora|lora-kohya)$"


class BaseModelRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    sha256: str


class ArtifactPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model_id: str
    kind: str
    uri: str
    bytes: int
    sha256: str
    created_at: datetime

    @computed_field
    @property
    def url(self) -> str:
        """Where the API serves it (a redirect to a presigned URL for S3)."""
        return f"/models/{self.model_id}/artifacts/{self.kind}"


class MetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    value: float | None
    details: dict
    evaluation_id: str | None = None
    created_at: datetime


class LineagePublic(BaseModel):
    """What the model was computed from: enough to reproduce it."""

    base_model: BaseModelRef
    parent_model_id: str | None
    job_id: str
    concepts: list
    options: dict
    seed: int


class ErasedModelPublic(BaseModel):
    id: str
    name: str | None
    tags: list[str]
    created_at: datetime
    lineage: LineagePublic
    artifacts: list[ArtifactPublic]
    metrics: list[MetricPublic]

    @classmethod
    def from_record(cls, model) -> ErasedModelPublic:
        """From an `ErasedModel` row with its base model, artifacts and metrics loaded."""
        return cls(
            id=model.id,
            name=model.name,
            tags=model.tags or [],
            created_at=model.created_at,
            lineage=LineagePublic(
                base_model=BaseModelRef.model_validate(model.base_model),
                parent_model_id=model.parent_model_id,
                job_id=model.job_id,
                concepts=model.concepts,
                options=model.options,
                seed=model.seed,
            ),
            artifacts=[ArtifactPublic.model_validate(a) for a in model.artifacts],
            metrics=[MetricPublic.model_validate(m) for m in model.metrics],
        )


class ErasedModelsPublic(BaseModel):
    data: list[ErasedModelPublic]
    count: int


class ArtifactLink(BaseModel):
    """A presigned download URL (`?redirect=false`)."""

    url: str
    expires_in: int


class ExportPending(BaseModel):
    """An export was queued; ask again after `retry_after` seconds."""

    detail: str
    retry_after: int


class MetricsPublic(BaseModel):
    data: list[MetricPublic]
    count: int
