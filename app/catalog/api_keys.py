"""API key records: creation (the only time the key is shown), revocation, authentication."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import ROLES, hash_secret, new_key, secret_matches, split_key

from .models import ApiKey, now


def create_api_key(
    db: Session, *, role: str, name: str | None = None, pepper: str = ""
) -> tuple[ApiKey, str]:
    """A new key of `role`; returns the record and the key string, which is not stored.

    Args:
        db: the catalog session; the key is committed.
        role: viewer, operator or admin.
        name: who or what the key is for.
        pepper: MACE_API_KEY_PEPPER.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    key, prefix, secret = new_key()
    record = ApiKey(prefix=prefix, secret_sha256=hash_secret(secret, pepper), role=role, name=name)
    db.add(record)
    db.commit()
    return record, key


def revoke_api_key(db: Session, *, key_id: str) -> ApiKey | None:
    """Revoke a key (idempotent); None when there is no key with that id."""
    record = db.get(ApiKey, key_id)
    if record is not None and record.revoked_at is None:
        record.revoked_at = now()
        db.commit()
    return record


def list_api_keys(db: Session) -> list[ApiKey]:
    """Every key, oldest first, revoked ones included."""
    return list(db.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def authenticate(db: Session, *, key: str, pepper: str = "") -> ApiKey | None:
    """The live key record matching `key`, or None (malformed, unknown or revoked)."""
    parts = split_key(key)
    if parts is None:
        return None
    prefix, secret = parts
    candidates = db.scalars(
        select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    )
    for record in candidates:
        if secret_matches(secret, record.secret_sha256, pepper):
            return record
    return None
