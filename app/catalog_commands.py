"""`mace keys ...` and `mace base-models ...`: the catalog's administration from a shell.

Base models are registered only here, never over HTTP: registering one reads server paths.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import OperationalError, ProgrammingError

from app.catalog.api_keys import create_api_key, list_api_keys, revoke_api_key
from app.catalog.base_models import DuplicateBaseModel, list_base_models, register_base_model
from app.catalog.db import session_factory
from app.schemas.text import NAME_LENGTH, clean_text
from app.settings import get_settings

_LOOKS_LIKE_ID = re.compile(r"^[0-9a-f]{32}$")  # would shadow an erased model's id in requests


class CommandError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def run(command: Callable[[object], int]) -> Callable[[object], int]:
    """`command` with user errors and an unreachable database reported as one line."""

    def guarded(args) -> int:
        try:
            return command(args)
        except CommandError as exc:
            print(f"mace {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except (OperationalError, ProgrammingError) as exc:
            print(
                f"mace {args.command}: error: the catalog database is unavailable or not "
                f"migrated (run `alembic upgrade head`): {exc.orig}",
                file=sys.stderr,
            )
            return 2

    return guarded


@run
def keys_create(args) -> int:
    """Create a key and print it, once, as the last line."""
    settings = get_settings()
    name = _clean_name(args.name) if args.name else None
    with session_factory()() as db:
        record, key = create_api_key(db, role=args.role, name=name, pepper=settings.API_KEY_PEPPER)
    label = f" ({record.name})" if record.name else ""
    print(f"created {record.role} key {record.id}{label}; it is shown only now:")
    print(key)
    return 0


@run
def keys_revoke(args) -> int:
    """Revoke the key `args.id`; requests with it get 401 from then on."""
    with session_factory()() as db:
        record = revoke_api_key(db, key_id=args.id)
    if record is None:
        raise CommandError(f"no API key with id {args.id} (see `mace keys list`)")
    print(f"revoked key {record.id} at {record.revoked_at:%Y-%m-%d %H:%M:%S %Z}")
    return 0


@run
def keys_list(_args) -> int:
    """Every key with its role and state; never a secret."""
    with session_factory()() as db:
        records = list_api_keys(db)
    print(f"{'ID':32}  {'PREFIX':8}  {'ROLE':8}  {'CREATED':19}  {'REVOKED':19}  NAME")
    for r in records:
        revoked = f"{r.revoked_at:%Y-%m-%d %H:%M:%S}" if r.revoked_at else "-"
        print(
            f"{r.id:32}  {r.prefix:8}  {r.role:8}  {r.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{revoked:19}  {r.name or ''}"
        )
    return 0


@run
def base_models_add(args) -> int:
    """Hash the model's files and register it under `args.name`."""
    name = _clean_name(args.name)
    if _LOOKS_LIKE_ID.match(name):
        raise CommandError(f"{name!r} looks like an erased model's id; choose another name")
    try:
        # The engine's loader, imported here only: the API process never imports worker code.
        base_model = importlib.import_module("worker.erasure.base_model")
    except ImportError as exc:
        raise CommandError(f"the engine is not installed ({exc})") from exc
    try:
        identity = base_model.model_identity(args.source)
    except ValueError as exc:  # ModelNotFoundError: not a pipeline folder, not in the HF cache
        raise CommandError(str(exc)) from exc
    local = Path(args.source).expanduser()
    source = str(local.resolve()) if local.is_dir() else args.source
    with session_factory()() as db:
        try:
            record = register_base_model(db, name=name, source=source, sha256=identity.sha256)
        except DuplicateBaseModel as exc:
            raise CommandError(f"{exc} (see `mace base-models list`)") from exc
    print(f"registered base model {record.name} ({record.id}) from {source}")
    print(f"sha256 {record.sha256}")
    return 0


@run
def base_models_list(_args) -> int:
    """Every registered base model with its hash and source."""
    with session_factory()() as db:
        records = list_base_models(db)
    print(f"{'NAME':24}  {'ID':32}  {'SHA256':12}  SOURCE")
    for r in records:
        print(f"{r.name:24}  {r.id:32}  {r.sha256[:12]:12}  {r.source}")
    return 0


def _clean_name(name: str) -> str:
    try:
        return clean_text(name, max_length=NAME_LENGTH)
    except ValueError as exc:
        raise CommandError(f"the name {exc}") from exc
