"""Writing an erasure's output folder: the edit, each group's LoRA and a manifest.

Everything is written into a temporary sibling folder and renamed into place at the end, so an
interrupted run leaves no half-written output.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from .edit import EDIT_FILE, MANIFEST_FILE, CompactEdit, file_sha256
from .erase import ErasureResult

LORA_DIR = "loras"
LORA_FILE = "pytorch_lora_weights.safetensors"


def lora_folder_name(index: int, name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "concept"
    return f"{index:03d}-{slug}"


def build_manifest(root: Path, edit: CompactEdit, timings: dict[str, float]) -> dict:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        files[str(path.relative_to(root))] = {
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
    return {
        "format": "mace-erasure/1",
        "edit": EDIT_FILE,
        "base_model": edit.metadata.get("base_model"),
        "concepts": edit.metadata.get("concepts"),
        "options": edit.metadata.get("options"),
        "seed": edit.metadata.get("seed"),
        "versions": edit.metadata.get("versions"),
        "log": edit.metadata.get("log", []),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "files": files,
    }


def write_erasure(result: ErasureResult, out_dir: str | Path) -> Path:
    """Write the output folder atomically; refuses to overwrite a non-empty folder."""
    from .lora_files import save_lora_factors

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new --out folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        result.edit.save(staging)
        concepts = result.edit.metadata.get("concepts", [])
        for index, factors in sorted(result.loras.items()):
            name = concepts[index]["targets"][0] if index < len(concepts) else str(index)
            save_lora_factors(factors, staging / LORA_DIR / lora_folder_name(index, name))
        manifest = build_manifest(staging, result.edit, result.timings)
        manifest["lora_losses"] = {str(k): v for k, v in result.lora_losses.items()}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
