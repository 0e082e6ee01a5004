"""Writing an erasure's output folder: the edit, each group's LoRA and a manifest.

Everything is written into a temporary sibling folder and renamed into place at the end, so an
interrupted run leaves no half-written output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .edit import EDIT_FILE, MANIFEST_FILE, CompactEdit, file_sha256
from .erase import ErasureResult
from .lora_files import save_lora_factors
from .staging import staged_folder

LORA_DIR = "loras"


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
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        result.edit.save(staging)
        concepts = result.edit.metadata.get("concepts", [])
        for index, factors in sorted(result.loras.items()):
            name = concepts[index]["targets"][0] if index < len(concepts) else str(index)
            save_lora_factors(factors, staging / LORA_DIR / lora_folder_name(index, name))
        manifest = build_manifest(staging, result.edit, result.timings)
        manifest["lora_losses"] = {str(k): v for k, v in result.lora_losses.items()}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return out_dir
