"""Dependencies of the routes, as `Annotated` aliases: the session, settings, store and caller."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth import role_allows
from app.catalog.api_keys import authenticate
from app.catalog.db import get_db
from app.catalog.models import ApiKey
from app.errors import Forbidden, Unauthorized
from app.settings import Settings, get_settings
from app.storage import LocalStore, S3Store, make_store


@lru_cache
def get_store() -> LocalStore | S3Store:
    """One artifact store per process (an S3 client is costly to build)."""
    return make_store()


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[LocalStore | S3Store, Depends(get_store)]

_bearer = HTTPBearer(auto_error=False, description="an API key: `mace_<prefix>_<secret>`")


def current_key(
    db: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The caller's key from `Authorization: Bearer <key>`; 401 when missing, unknown or revoked."""
    if credentials is None:
        raise Unauthorized("send an API key: Authorization: Bearer mace_<prefix>_<secret>")
    record = authenticate(db, key=credentials.credentials, pepper=settings.API_KEY_PEPPER)
    if record is None:
        raise Unauthorized("invalid or revoked API key")
    return record


def require(role: str) -> Callable[[ApiKey], ApiKey]:
    """A dependency admitting keys of `role` or a higher one."""

    async def check(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:  # no I/O: no thread
        if not role_allows(key.role, role):
            raise Forbidden(f"this needs a key with the {role} role; yours is {key.role}")
        return key

    return check


ViewerKey = Annotated[ApiKey, Depends(require("viewer"))]
OperatorKey = Annotated[ApiKey, Depends(require("operator"))]
AdminKey = Annotated[ApiKey, Depends(require("admin"))]
