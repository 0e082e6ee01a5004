"""`/metrics`: Prometheus text, for keys with the viewer role or more."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .deps import SessionDep, ViewerKey
from .telemetry import REGISTRY, catalog_registry

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(db: SessionDep, _key: ViewerKey) -> Response:
    """Jobs by status, queue depths, stage durations and generate latency."""
    text = generate_latest(REGISTRY) + generate_latest(catalog_registry(db))
    return Response(text, media_type=CONTENT_TYPE_LATEST)
