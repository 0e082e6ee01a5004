"""`/models`: erased models, their lineage, and downloads of their artifacts."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from app.artifacts import object_key
from app.catalog import erased_models, evaluations
from app.dispatch import request_export
from app.errors import BadGateway, Conflict, NotFound, ServiceUnavailable
from app.schemas.common import Limit, Offset
from app.schemas.models import (
    ARTIFACT_KIND_PATTERN,
    EXPORT_KINDS,
    ArtifactLink,
    ErasedModelPublic,
    ErasedModelsPublic,
    ExportPending,
    MetricPublic,
    MetricsPublic,
)
from app.storage import S3Store, StorageError

from .deps import SessionDep, SettingsDep, StoreDep, ViewerKey

router = APIRouter(prefix="/models", tags=["models"])

MEDIA_TYPES = {".json": "application/json", ".tar": "application/x-tar"}


@router.get("", response_model=ErasedModelsPublic)
def list_models(
    db: SessionDep,
    _key: ViewerKey,
    offset: Annotated[Offset, Query()] = 0,
    limit: Annotated[Limit, Query()] = 50,
) -> ErasedModelsPublic:
    """Erased models, newest first."""
    page, count = erased_models.list_models(db, offset=offset, limit=limit)
    return ErasedModelsPublic(data=[ErasedModelPublic.from_record(m) for m in page], count=count)


@router.get("/{model_id}", response_model=ErasedModelPublic)
def read_model(model_id: str, db: SessionDep, _key: ViewerKey) -> ErasedModelPublic:
    """An erased model: lineage (base model, parent, concepts, options, seed), artifacts and
    metrics."""
    return ErasedModelPublic.from_record(erased_models.get_model(db, model_id))


@router.get("/{model_id}/metrics", response_model=MetricsPublic)
def read_model_metrics(model_id: str, db: SessionDep, _key: ViewerKey) -> MetricsPublic:
    """Every metric recorded for the model by its evaluations, newest first."""
    rows = evaluations.model_metrics(db, model_id)
    return MetricsPublic(data=[MetricPublic.model_validate(m) for m in rows], count=len(rows))


@router.get(
    "/{model_id}/artifacts/{kind}",
    response_model=ArtifactLink,
    responses={
        200: {"description": "the bytes (local storage), or the URL with ?redirect=false"},
        202: {"model": ExportPending, "description": "an export was queued; retry later"},
        307: {"description": "redirect to a presigned download URL (S3 storage)"},
    },
)
def download_artifact(
    model_id: str,
    kind: Annotated[str, Path(pattern=ARTIFACT_KIND_PATTERN)],
    db: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    _key: ViewerKey,
    redirect: bool = True,
):
    """Download an artifact: `edit`, `manifest`, `lora-NNN`, or an export (`diffusers`,
    `unet-pt`, `lora`, `lora-kohya`), which is made on first request (202 + Retry-After)."""
    model = erased_models.get_model(db, model_id)
    artifact = erased_models.get_artifact(db, model.id, kind)
    if artifact is None:
        if kind not in EXPORT_KINDS:
            raise NotFound(f"erased model {model_id} has no {kind} artifact")
        return _export_pending(model.id, kind, settings.EXPORT_RETRY_AFTER_S)
    try:
        key = object_key(store, artifact.uri)
    except StorageError as exc:
        raise Conflict(str(exc)) from exc
    if isinstance(store, S3Store):
        url = store.presigned_url(key)
        if redirect:
            return RedirectResponse(url, status_code=307)
        return ArtifactLink(url=url, expires_in=store.presign_seconds)
    try:
        stream = store.open(key)
    except OSError as exc:
        raise NotFound(f"the stored {kind} artifact of {model_id} is missing") from exc
    name = key.rsplit("/", 1)[-1]
    media_type = MEDIA_TYPES.get(name[name.rfind(".") :], "application/octet-stream")
    return StreamingResponse(
        _chunks(stream),
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Content-Length": str(os.fstat(stream.fileno()).st_size),
            "ETag": f'"{artifact.sha256}"',
        },
    )


def _chunks(stream, size: int = 1 << 20):
    with stream:
        while chunk := stream.read(size):
            yield chunk


def _export_pending(model_id: str, kind: str, retry_after: int) -> JSONResponse:
    try:
        error = request_export(model_id, kind)
    except Exception as exc:
        message = f"cannot queue the export, the broker is unreachable ({exc})"
        raise ServiceUnavailable(message) from exc
    if error is not None:
        raise BadGateway(
            f"the last {kind} export of {model_id} failed: {error}; ask again to retry"
        )
    body = ExportPending(detail=f"the {kind} export is being made", retry_after=retry_after)
    return JSONResponse(
        body.model_dump(), status_code=202, headers={"Retry-After": str(retry_after)}
    )
