"""`/generate`: images from a base or erased model, made by a worker while the request waits."""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Response

from app.generation import generation_payload, run_generation
from app.schemas.generate import GeneratedImages, GenerateRequest

from .deps import OperatorKey, SessionDep, SettingsDep, StoreDep
from .telemetry import GENERATE_SECONDS

router = APIRouter(tags=["generate"])


@router.post(
    "/generate",
    response_model=GeneratedImages,
    responses={
        200: {"content": {"image/png": {}}, "description": "one image as PNG; several as JSON"},
        404: {"description": "unknown model"},
        409: {"description": "the model is still being erased"},
        503: {"description": "the task broker is unreachable"},
        504: {"description": "no worker answered in time"},
    },
)
def generate(
    body: GenerateRequest,
    db: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    _key: OperatorKey,
):
    """Generate with an erased model (`model_id`) or a base model (`base_model`). A plain `def`
    route: FastAPI runs it in its threadpool, so waiting here blocks no other request."""
    payload = generation_payload(db, body, store)
    db.close()  # the wait can be long: give the connection back to the pool first
    started = time.perf_counter()
    result = run_generation(payload, timeout_s=settings.GENERATE_TIMEOUT_S)
    GENERATE_SECONDS.observe(time.perf_counter() - started)
    images = result.get("images") or []
    if len(images) == 1:
        headers = {"X-Generation-Seconds": str(result.get("seconds", ""))}
        return Response(base64.b64decode(images[0]), media_type="image/png", headers=headers)
    return GeneratedImages(images=images, seconds=result.get("seconds"))
