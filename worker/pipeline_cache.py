"""Warm base pipelines per worker process, least recently used first out.

Erased models do not get pipelines of their own: they share their base's pipeline and apply their
edit to its UNet (`EditedUnet`) before each use. A pipeline is used by one task at a time.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from worker.erasure.base_model import ModelIdentity, load_pipeline, model_identity
from worker.erasure.edit import CompactEdit, EditedUnet
from worker.erasure.errors import ErasureInputError, ModelNotFoundError

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    pipe: object
    lock: threading.Lock = field(default_factory=threading.Lock)


class PipelineCache:
    """Up to `size` pipelines, keyed by the base model's sha256 (checked when loaded)."""

    def __init__(
        self,
        size: int,
        *,
        load: Callable[[str], object] = load_pipeline,
        identify: Callable[[str], ModelIdentity] = model_identity,
    ):
        self.size = max(1, size)
        self._load, self._identify = load, identify
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def use(self, source: str, sha256: str, edit: CompactEdit | None = None) -> Iterator[object]:
        """The base pipeline with `edit` applied (or none), held for this task alone.

        Args:
            source: where the base model is: a server-side folder or a cached HF id.
            sha256: the identity hash recorded for it; a model whose files hash differently is
                refused with `ErasureInputError`.
            edit: the erased model to run, or None for the base model itself.
        """
        entry = self._entry(source, sha256)
        with entry.lock:
            edited = EditedUnet.of(entry.pipe.unet)
            if edit is None and edited.applied is not None:
                edited.restore()
            elif edit is not None and edited.applied is not edit:
                edited.apply(edit)
            yield entry.pipe

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, source: str, sha256: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(sha256)
            if entry is not None:
                self._entries.move_to_end(sha256)
                return entry
            check_identity(source, sha256, identify=self._identify)
            logger.info("loading base model %s (%s)", source, sha256[:12])
            pipe = self._load(source)
            EditedUnet.of(pipe.unet)  # keeps the base weights before any edit is applied
            entry = self._entries[sha256] = _Entry(pipe)
            while len(self._entries) > self.size:
                evicted, _ = self._entries.popitem(last=False)
                logger.info("evicting base model %s from the pipeline cache", evicted[:12])
                _release_memory()
            return entry


def check_identity(
    source: str, sha256: str, *, identify: Callable[[str], ModelIdentity] = model_identity
) -> None:
    """Refuse a base model whose files no longer hash to what the catalog recorded, or that is
    missing; the messages name no server path (those go to the log)."""
    try:
        actual = identify(source).sha256
    except ModelNotFoundError as exc:
        logger.error("base model %s: %s", sha256[:12], exc)
        raise ErasureInputError("the base model is not available on this worker") from exc
    if actual != sha256:
        logger.error("base model at %s: sha256 %s, catalog %s", source, actual, sha256)
        raise ErasureInputError(
            f"the base model's files have changed since it was registered (sha256 "
            f"{actual[:12]}, catalog {sha256[:12]}); an admin must register it again"
        )


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
