"""API keys: `mace_<prefix>_<secret>`, stored as a hash of the secret and looked up by prefix.

Only the prefix is stored in clear, so a leaked database does not leak usable keys; with
MACE_API_KEY_PEPPER set, the hash is an HMAC keyed by it, so the database alone does not even
allow an offline guess.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ROLES = ("viewer", "operator", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
KEY_SCHEME = "mace"


def hash_secret(secret: str, pepper: str = "") -> str:
    """The stored form of a key's secret: sha256, or HMAC-SHA256 keyed by the pepper.

    Args:
        secret: the part of the key after its prefix.
        pepper: the optional server-side secret (MACE_API_KEY_PEPPER).
    """
    if pepper:
        return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """A fresh key as `(key, prefix, secret)`; the key is what the client sends."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_SCHEME}_{prefix}_{secret}", prefix, secret


def split_key(key: str) -> tuple[str, str] | None:
    """`(prefix, secret)` of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(secret: str, stored_sha256: str, pepper: str = "") -> bool:
    """Constant-time comparison, so response times do not reveal how much of a hash matched."""
    return hmac.compare_digest(hash_secret(secret, pepper), stored_sha256)


def role_allows(role: str, required: str) -> bool:
    """Whether a key of `role` may do what needs `required` (viewer < operator < admin)."""
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[required]
