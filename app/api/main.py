"""The FastAPI application: routes, error handlers, the body cap and the re-dispatch loop.

Run with `uvicorn app.api.main:create_app --factory` (or `mace serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.dispatch import redispatch_loop
from app.settings import get_settings

from . import (
    erasures,
    evaluations,
    experiments,
    generate,
    health,
    metrics,
    models,
    prompt_sets,
)
from .body_limit import BodySizeLimit
from .errors import install_error_handlers

DESCRIPTION = """\
Erase concepts from Stable Diffusion models with MACE (mass concept erasure), as a service.

Every route but `/health` needs an API key: `Authorization: Bearer mace_<prefix>_<secret>`
(created with `mace keys create --role viewer|operator|admin`). Viewers read; operators also
submit and cancel erasures, generate images and upload prompt sets; admins may do everything.
"""


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Run the re-dispatch loop for as long as the application serves."""
    interval = get_settings().DISPATCH_INTERVAL_S
    loop = asyncio.create_task(redispatch_loop(interval)) if interval > 0 else None
    try:
        yield
    finally:
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop


def create_app() -> FastAPI:
    """A new application configured from the current settings."""
    app = FastAPI(title="MACE erasure service", description=DESCRIPTION, lifespan=lifespan)
    routers = (erasures, evaluations, experiments, models, generate, prompt_sets, health, metrics)
    for module in routers:
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=get_settings().MAX_BODY_BYTES)
    return app
