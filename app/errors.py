"""Errors a client can act on, as exception classes carrying their HTTP status.

Services raise them; `app.api.errors` renders them as JSON `{"detail": "..."}`.
"""

from __future__ import annotations

from collections.abc import Sequence


class ApiError(Exception):
    """An error a client can act on; subclasses set the status."""

    status_code = 500
    headers: dict[str, str] | None = None

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class PayloadTooLarge(ApiError):
    status_code = 413


class Unprocessable(ApiError):
    """A request that is well-formed but cannot be run as given."""

    status_code = 422


class BadGateway(ApiError):
    """The worker failed on a request that was valid here."""

    status_code = 502


class ServiceUnavailable(ApiError):
    status_code = 503


class GatewayTimeout(ApiError):
    status_code = 504


class InvalidField(ApiError):
    """A 422 shaped like FastAPI's validation errors, for checks that need the catalog."""

    status_code = 422

    def __init__(self, loc: Sequence[str | int], message: str):
        super().__init__(message)
        self.loc = list(loc)

    def body(self) -> dict:
        return {"detail": [{"type": "value_error", "loc": self.loc, "msg": self.detail}]}
