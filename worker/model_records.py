"""An erasure's output folder stored as artifacts, and the erased model recorded in the catalog.

Upload first, record last: the model, its artifacts and the job's `succeeded` are written in one
transaction, and only by the worker that still owns the job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.catalog.models import Artifact, ErasedModel, ErasureJob, now
from app.storage import StorageError, StoredObject, sha256_of
from worker.erasure.artifacts import LORA_DIR
from worker.erasure.edit import EDIT_FILE, MANIFEST_FILE

_LORA_FOLDER = re.compile(rf"^{LORA_DIR}/(\d{{3}})-[^/]+/[^/]+\.safetensors$")


@dataclass(frozen=True)
class StoredArtifact:
    kind: str
    stored: StoredObject


def model_key(model_id: str, relative: str) -> str:
    return f"models/{model_id}/{relative}"


def artifact_kind(relative: str) -> str | None:
    """`edit`, `manifest` or `lora-NNN` for the files of an erasure folder; None for others."""
    if relative == EDIT_FILE:
        return "edit"
    if relative == MANIFEST_FILE:
        return "manifest"
    match = _LORA_FOLDER.match(relative)
    return f"lora-{match.group(1)}" if match else None


def put_verified(store, key: str, path: Path) -> StoredObject:
    """Upload and check that the store holds exactly the local bytes."""
    stored = store.put_file(key, path)
    if stored.sha256 != sha256_of(path) or stored.bytes != path.stat().st_size:
        raise StorageError(f"{key}: the stored object does not match the uploaded file")
    return stored


def upload_erasure(
    store,
    model_id: str,
    folder: Path,
    *,
    retrying: Callable[[Callable[[], StoredObject], str], StoredObject],
    progress: Callable[[float], None] = lambda fraction: None,
) -> list[StoredArtifact]:
    """Upload every artifact of an erasure folder to `models/<model_id>/<relative path>`.

    Args:
        store: the artifact store.
        model_id: the erased model's id.
        folder: what `write_erasure` wrote.
        retrying: runs an upload with retries, given the upload and a description.
        progress: called with the fraction of files uploaded.
    """
    files = [
        (p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()
    ]
    files = [(artifact_kind(rel), rel, path) for rel, path in files if artifact_kind(rel)]
    uploaded = []
    for done, (kind, relative, path) in enumerate(files, start=1):
        key = model_key(model_id, relative)
        stored = retrying(
            lambda key=key, path=path: put_verified(store, key, path), f"upload of {key}"
        )
        uploaded.append(StoredArtifact(kind, stored))
        progress(done / len(files))
    return uploaded


def record_erased_model(
    db: Session,
    job: ErasureJob,
    *,
    worker: str,
    model: ErasedModel,
    artifacts: list[StoredArtifact],
    stage_timings: dict,
) -> bool:
    """In one transaction: the job -> succeeded (if `worker` still owns it), the model and its
    artifacts inserted. False, with nothing written, when the job is no longer this worker's."""
    result = db.execute(
        update(ErasureJob)
        .where(ErasureJob.id == job.id, ErasureJob.status == "running", ErasureJob.worker == worker)
        .values(
            status="succeeded",
            finished_at=now(),
            progress=1.0,
            stage_timings=stage_timings,
            model_id=model.id,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.rollback()
        return False
    db.add(model)
    db.flush()
    db.add_all(
        Artifact(
            model_id=model.id,
            kind=a.kind,
            uri=a.stored.uri,
            bytes=a.stored.bytes,
            sha256=a.stored.sha256,
        )
        for a in artifacts
    )
    db.commit()
    return True
