"""`/health` (is the process up) and `/ready` (can it serve: database, broker, storage)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.broker import ping_broker
from app.catalog.db import session_factory

from .deps import ViewerKey, get_store

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/health")
def health() -> dict:
    """Liveness: answers while the process runs; no key, no dependencies."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "a dependency is down; see `checks`"}})
async def ready(_key: ViewerKey) -> JSONResponse:
    """Readiness: the database answers `SELECT 1`, the broker is reachable, storage pings."""
    checks = {
        "database": await run_in_threadpool(_check, _database),
        "broker": await run_in_threadpool(_check, ping_broker),
        "storage": await run_in_threadpool(_check, lambda: get_store().ping()),
    }
    failed = [name for name, outcome in checks.items() if outcome != "ok"]
    if failed:
        detail = f"not ready: {', '.join(failed)} unavailable"
        return JSONResponse({"detail": detail, "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


def _database() -> None:
    with session_factory()() as db:
        db.execute(text("SELECT 1"))


def _check(probe) -> str:
    try:
        probe()
    except Exception as exc:  # every failure is a "not ready", reported by name
        logger.warning("readiness check failed: %s", exc)
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"
