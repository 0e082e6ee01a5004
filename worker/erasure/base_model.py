"""Loading SD 1.x / 2.x base models offline, and their identity (name + content hash)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ModelNotFoundError

# Files whose bytes define what the model computes; configs are hashed too, caches are not.
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".pt", ".ckpt")


@dataclass(frozen=True)
class ModelIdentity:
    """What a result was computed from: the name the user gave and a hash of the model's files."""

    name: str
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model_path(name_or_path: str) -> Path:
    """A local diffusers directory, or the snapshot of a Hugging Face id in the local cache.

    Never downloads; raises `ModelNotFoundError` naming what was looked for.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but not a diffusers pipeline (no model_index.json in it)"
            )
        return path.resolve()
    if path.exists() or name_or_path.count("/") != 1 or name_or_path.startswith((".", "/")):
        raise ModelNotFoundError(
            f"no diffusers pipeline at {name_or_path!r}: give a local pipeline folder or a "
            "Hugging Face id (owner/name) that is already in the local cache"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as exc:  # the hub raises several types for "not cached"
        cache = (
            os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        )
        raise ModelNotFoundError(
            f"{name_or_path!r} is not in the local Hugging Face cache ({cache}); this service "
            "never downloads weights: put the model there (huggingface-cli download "
            f"{name_or_path}) or pass a local folder"
        ) from exc


def model_identity(name_or_path: str) -> ModelIdentity:
    """Name plus sha256 over the model's weight and config files (sorted paths and bytes)."""
    root = resolve_model_path(name_or_path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.suffix not in _HASHED_SUFFIXES or file.name.startswith("."):
            continue
        digest.update(str(file.relative_to(root)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return ModelIdentity(name=name_or_path, sha256=digest.hexdigest())


def default_device_and_dtype():
    """CUDA and fp16 when present, else CPU and fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def load_pipeline(name_or_path: str, *, device=None, dtype=None):
    """A `StableDiffusionPipeline` from a local folder or the local cache, safety checker off."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    root = resolve_model_path(name_or_path)
    auto_device, auto_dtype = default_device_and_dtype()
    index = json.loads((root / "model_index.json").read_text())
    extra = {"safety_checker": None, "requires_safety_checker": False}
    if "feature_extractor" in index:
        extra["feature_extractor"] = None
    for library_logging in (diffusers_logging, transformers_logging):
        library_logging.set_verbosity_error()
        library_logging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(
        root, dtype=dtype or auto_dtype, local_files_only=True, **extra
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or auto_device)
