"""Erased models' edits, downloaded once per worker into a local folder and kept loaded (LRU).

Files are named by their sha256, which is checked on download, so a cached file is the artifact
the catalog recorded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from worker.erasure.edit import CompactEdit


class EditCache:
    """Up to `size` loaded edits; files in `folder`, fetched with `download(key, path, sha256)`."""

    def __init__(self, folder: Path, size: int, download: Callable[[str, Path, str], Path]):
        self.folder, self.size, self._download = folder, max(1, size), download
        self._edits: OrderedDict[str, CompactEdit] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, sha256: str) -> CompactEdit:
        """The edit stored at `key`, whose bytes hash to `sha256`."""
        with self._lock:
            edit = self._edits.get(sha256)
            if edit is not None:
                self._edits.move_to_end(sha256)
                return edit
            path = self.folder / f"{sha256}.safetensors"
            if not path.is_file():
                partial = path.with_suffix(".partial")
                self._download(key, partial, sha256)
                partial.replace(path)
            edit = self._edits[sha256] = CompactEdit.load(path)
            while len(self._edits) > self.size:
                self._edits.popitem(last=False)
            return edit
