"""CLIP for the metrics: loaded offline from a folder or the HF cache, identified by a hash."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worker.erasure.errors import ModelNotFoundError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt")


@dataclass
class ClipModel:
    """A CLIPModel, the processor that prepares its inputs, and where they came from."""

    model: torch.nn.Module
    processor: object
    source: dict = field(default_factory=dict)

    @torch.no_grad()
    def image_embeddings(self, images, batch_size: int = 16) -> torch.Tensor:
        """Unit-norm image embeddings, float64, one row per PIL image."""
        rows = []
        for start in range(0, len(images), batch_size):
            chunk = [im.convert("RGB") for im in images[start : start + batch_size]]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.model.device, self.model.dtype)
            rows.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return _unit(torch.cat(rows))

    @torch.no_grad()
    def text_embeddings(self, texts, batch_size: int = 64) -> torch.Tensor:
        """Unit-norm text embeddings, float64 (texts longer than CLIP's window are truncated)."""
        rows = []
        for start in range(0, len(texts), batch_size):
            tokens = self.processor(
                text=list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=77,
            )
            tokens = {k: v.to(self.model.device) for k, v in tokens.items()}
            rows.append(_features(self.model.get_text_features(**tokens)))
        return _unit(torch.cat(rows))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output here; 4.x returned the projected tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _unit(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.double().cpu()
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def resolve_clip_path(name_or_path: str) -> Path:
    """A local CLIP folder, or the cached snapshot of a Hugging Face id; never downloads."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no CLIP model (no config.json)")
        return path.resolve()
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception:  # the hub raises several types for "not cached"
            pass
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    raise ModelNotFoundError(
        f"CLIP model {name_or_path!r} is neither a local folder nor in the Hugging Face cache "
        f"({cache}); nothing is downloaded here: put it in the cache (huggingface-cli download "
        f"{name_or_path}) or give a local folder holding config.json and the weights"
    )


def folder_sha256(root: Path) -> str:
    """sha256 over the weight, config and vocabulary files of a model folder (sorted)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.suffix not in _HASHED_SUFFIXES or file.name.startswith("."):
            continue
        digest.update(str(file.relative_to(root)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_clip(name_or_path: str = DEFAULT_CLIP, *, device=None) -> ClipModel:
    """A `ClipModel` from a local folder or the local HF cache; its source records the hash."""
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    root = resolve_clip_path(name_or_path)
    model = CLIPModel.from_pretrained(root, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(root, local_files_only=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = {"name": name_or_path, "path": str(root), "sha256": folder_sha256(root)}
    return ClipModel(model.to(device), processor, source)
