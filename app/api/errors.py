"""Handlers rendering errors as JSON: `ApiError`s with their status, database outages as 503.

A request during a database restart gets `{"detail": "database unavailable"}`, never a
traceback; `pool_pre_ping` replaces the broken connections once the database is back.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app.errors import ApiError, InvalidField

logger = logging.getLogger(__name__)


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    body = exc.body() if isinstance(exc, InvalidField) else {"detail": exc.detail}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own handler fails on a NaN it echoes back (JSON has no NaN): a 500, not a 422.
    errors = [_readable_context(error) for error in exc.errors()]
    return JSONResponse({"detail": _finite(jsonable_encoder(errors))}, status_code=422)


def _readable_context(error: dict) -> dict:
    context = error.get("ctx")
    if not context:
        return error
    readable = {k: str(v) if isinstance(v, Exception) else v for k, v in context.items()}
    return {**error, "ctx": readable}


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def _database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
    if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
        logger.warning("database unavailable: %s", exc.orig)
        return JSONResponse({"detail": "database unavailable"}, status_code=503)
    logger.exception("database error", exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Render `ApiError`s, validation errors and database outages as JSON."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
