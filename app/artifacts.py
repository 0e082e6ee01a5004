"""From a catalogued artifact URI back to its key in the configured store."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from app.storage import LocalStore, S3Store, StorageError


def object_key(store: LocalStore | S3Store, uri: str) -> str:
    """The store key of `uri` (`models/<id>/edit.safetensors`); raises StorageError when the
    URI is not in this store (the storage settings changed since it was written)."""
    if isinstance(store, S3Store):
        prefix = f"s3://{store.bucket}/" + (f"{store.prefix}/" if store.prefix else "")
        if uri.startswith(prefix) and len(uri) > len(prefix):
            return uri[len(prefix) :]
    else:
        parsed = urlparse(uri)
        root = store.root.resolve()
        path = Path(url2pathname(parsed.path)).resolve()
        if parsed.scheme == "file" and path.is_relative_to(root) and path != root:
            return path.relative_to(root).as_posix()
    raise StorageError(f"artifact {uri} is not in the configured store")
