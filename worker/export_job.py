"""An erased model exported for other tools and stored as one more of its artifacts.

Idempotent: an export that is already recorded is returned as it is; a folder export is stored
as one `.tar`.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.artifacts import object_key
from app.catalog.db import session_factory
from app.catalog.models import Artifact, BaseModel, ErasedModel
from app.settings import get_settings
from worker import runtime
from worker.erasure.errors import ErasureInputError
from worker.erasure.exports import EXPORT_FORMATS, export_edit
from worker.model_records import model_key, put_verified
from worker.pipeline_cache import check_identity
from worker.storage_retry import with_storage_retries


def export_model(model_id: str, kind: str) -> dict:
    """Export `model_id` in the format `kind` (one of `EXPORT_FORMATS`) and record the artifact.

    Returns `{"model_id", "kind", "uri", "bytes", "sha256"}` and, for a new export, the
    exporter's report (LoRA rank and approximation error).
    """
    if kind not in EXPORT_FORMATS:
        raise ErasureInputError(
            f"unknown export {kind!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    with session_factory()() as db:
        existing = _artifact(db, model_id, kind)
        if existing is not None:
            return _described(existing)
        model = db.get(ErasedModel, model_id)
        edit = _artifact(db, model_id, "edit")
        if model is None or edit is None:
            raise ErasureInputError(f"no erased model {model_id} with a stored edit")
        base = db.get(BaseModel, model.base_model_id)
    check_identity(base.source, base.sha256)
    compact = runtime.edits().get(object_key(runtime.store(), edit.uri), edit.sha256)
    with tempfile.TemporaryDirectory(prefix="mace-export-") as scratch:
        report = export_edit(base.source, compact, kind, Path(scratch) / kind)
        path, name = _single_file(Path(report["path"]), kind, Path(scratch))
        settings = get_settings()
        stored = with_storage_retries(
            lambda: put_verified(runtime.store(), model_key(model_id, f"exports/{name}"), path),
            what=f"upload of the {kind} export of {model_id}",
            attempts=settings.STORAGE_ATTEMPTS,
            backoff_s=settings.STORAGE_BACKOFF_S,
        )
    artifact = Artifact(
        model_id=model_id, kind=kind, uri=stored.uri, bytes=stored.bytes, sha256=stored.sha256
    )
    with session_factory()() as db:
        db.add(artifact)
        try:
            db.commit()
        except IntegrityError:  # the same export finished elsewhere first
            db.rollback()
            artifact = _artifact(db, model_id, kind)
    details = {k: v for k, v in report.items() if k not in ("path", "files")}
    return {**_described(artifact), "report": details}


def _artifact(db, model_id: str, kind: str) -> Artifact | None:
    return db.scalar(select(Artifact).where(Artifact.model_id == model_id, Artifact.kind == kind))


def _described(artifact: Artifact) -> dict:
    return {
        "model_id": artifact.model_id,
        "kind": artifact.kind,
        "uri": artifact.uri,
        "bytes": artifact.bytes,
        "sha256": artifact.sha256,
    }


def _single_file(path: Path, kind: str, scratch: Path) -> tuple[Path, str]:
    """The export as one file and its name under `exports/`: the file, or the folder as a tar."""
    if path.is_file():
        return path, f"{kind}/{path.name}"
    archive = scratch / f"{kind}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(path, arcname=kind)
    return archive, archive.name
