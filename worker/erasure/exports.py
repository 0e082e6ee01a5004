"""Exporting an erasure for other tools: a diffusers pipeline, a UNet `.pt`, or a LoRA.

The compact edit (W* = W0 M + U V) is the source of truth; every export is built from it and the
base model. The LoRA formats approximate the dense delta D = W* - W0 by a truncated SVD and report
how far the approximation is from the edit.

Rank rule: every matrix gets the same rank r (the requested one, or the largest of the per-matrix
ranks that meet the tolerance), so one `r` / `alpha = r` describes the whole file, the scale is 1
in every loader, and no loader has to support per-module ranks. A matrix smaller than r in one
dimension is stored exactly and padded with zero components up to r.

Each export is written into a temporary sibling folder and renamed into place at the end, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from .base_model import load_pipeline, resolve_model_path
from .edit import CompactEdit, EditedUnet
from .errors import ErasureInputError
from .layers import cross_attention_projections
from .staging import staged_folder

EXPORT_FORMATS = ("diffusers", "unet-pt", "lora", "lora-kohya")
UNET_FILE = "unet.pt"
LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_LORA_FILE = "mace_lora_kohya.safetensors"
LORA_REPORT_FILE = "lora_report.json"


@dataclass
class LoraApproximation:
    """Rank-r factors of each matrix's delta (up d_out x r, down r x d_in) and their errors."""

    rank: int
    up: dict[str, torch.Tensor] = field(default_factory=dict)
    down: dict[str, torch.Tensor] = field(default_factory=dict)
    matrices: dict[str, dict] = field(default_factory=dict)
    relative_error: float = 0.0

    @property
    def max_relative_error(self) -> float:
        return max((m["relative_error"] for m in self.matrices.values()), default=0.0)


def export_edit(
    base_model: str,
    edit: CompactEdit,
    fmt: str,
    out: str | Path,
    *,
    lora_rank: int | None = None,
    lora_tolerance: float = 0.01,
) -> dict:
    """Write the erased model in one of `EXPORT_FORMATS` to the folder `out`.

    Args:
        base_model: The base model the edit was made for (local folder or cached Hub id).
        edit: The erasure in its compact form.
        fmt: `diffusers` (a pipeline folder), `unet-pt` (`unet.pt`, the edited UNet state dict),
            `lora` (diffusers/peft `pytorch_lora_weights.safetensors`) or `lora-kohya`
            (a kohya-layout safetensors for ComfyUI / A1111).
        out: The output folder; it must not exist or be empty.
        lora_rank: LoRA formats only: the rank to use; by default the smallest rank that meets
            `lora_tolerance` for every matrix.
        lora_tolerance: LoRA formats only: the largest relative Frobenius error allowed per
            matrix when `lora_rank` is not given.

    Returns:
        A report: `format`, `path` (what to hand to the consuming tool), `files` (name -> bytes),
        `bytes`, and for the LoRA formats `rank`, `relative_error` (overall),
        `max_relative_error` (worst matrix) and `tolerance`.
    """
    if fmt not in EXPORT_FORMATS:
        raise ErasureInputError(
            f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}"
        )
    _check_lora_options(lora_rank, lora_tolerance)
    out = Path(out)
    with staged_folder(out) as staging:
        if fmt == "diffusers":
            details = _write_diffusers(base_model, edit, staging)
        elif fmt == "unet-pt":
            details = _write_unet_pt(base_model, edit, staging)
        else:
            details = _write_lora(base_model, edit, staging, fmt, lora_rank, lora_tolerance)
    files = {
        str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
    }
    main = details.pop("main")
    return {
        "format": fmt,
        "path": str(out / main if main else out),
        "files": files,
        "bytes": sum(files.values()),
        **details,
    }


def lora_approximation(
    edit: CompactEdit,
    base_weights: dict[str, torch.Tensor],
    *,
    rank: int | None = None,
    tolerance: float = 0.01,
) -> LoraApproximation:
    """Truncated-SVD factors of D = W0 (M - I) + U V for every matrix, in float64 on the CPU.

    Args:
        edit: The erasure in its compact form.
        base_weights: W0 of every edited matrix, by name (all of them: M changes each one).
        rank: The common rank; by default the largest of the per-matrix smallest ranks whose
            relative error ||D - D_k|| / ||D|| is at most `tolerance`.
        tolerance: The per-matrix relative error allowed when `rank` is not given.

    Returns:
        The factors (float32, singular values split evenly between up and down so neither
        factor is badly scaled in half precision) and per-matrix and overall errors.
    """
    transform = edit.transform.to("cpu", torch.float64)
    shift = transform - torch.eye(transform.shape[0], dtype=torch.float64)
    spectra = {}
    for name, weight in base_weights.items():
        delta = weight.detach().to("cpu", torch.float64) @ shift
        up, down = edit.factors.get(name, (None, None))
        if up is not None and up.shape[1]:
            delta += up.to("cpu", torch.float64) @ down.to("cpu", torch.float64)
        # D is at most 1280 x 1024 for SD 1.x/2.x: a full SVD per matrix takes well under a second.
        spectra[name] = torch.linalg.svd(delta, full_matrices=False)

    needed = {name: _smallest_rank(s, tolerance) for name, (_, s, _) in spectra.items()}
    common = rank if rank is not None else max(max(needed.values(), default=1), 1)
    approx = LoraApproximation(rank=common)
    residual_total = norm_total = 0.0
    for name, (left, values, right) in spectra.items():
        kept = min(common, values.numel())
        root = values[:kept].sqrt()
        up = torch.zeros(left.shape[0], common, dtype=torch.float64)
        down = torch.zeros(common, right.shape[1], dtype=torch.float64)
        up[:, :kept] = left[:, :kept] * root
        down[:kept] = root[:, None] * right[:kept]
        approx.up[name], approx.down[name] = up.float(), down.float()
        residual, norm = values[kept:].square().sum().item(), values.square().sum().item()
        residual_total, norm_total = residual_total + residual, norm_total + norm
        approx.matrices[name] = {
            "rank": kept,
            "rank_needed": needed[name],
            "relative_error": math.sqrt(residual / norm) if norm else 0.0,
            "delta_norm": math.sqrt(norm),
        }
    approx.relative_error = math.sqrt(residual_total / norm_total) if norm_total else 0.0
    return approx


def _smallest_rank(values: torch.Tensor, tolerance: float) -> int:
    """Smallest k with sqrt(sum_{j >= k} s_j^2) <= tolerance * ||s||, s sorted descending."""
    energy = values.square()
    total = energy.sum()
    if total == 0:
        return 0
    # tails[k] = energy dropped when keeping the first k components; tails[n] = 0 always passes.
    tails = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    passing = (tails <= (tolerance**2) * total).nonzero()
    return int(passing[0].item())


def _check_lora_options(rank: int | None, tolerance: float) -> None:
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ErasureInputError(f"lora_rank must be a positive integer, got {rank!r}")
    if not 0 <= tolerance < 1:
        raise ErasureInputError(f"lora_tolerance must be in [0, 1), got {tolerance!r}")


def _load_base_unet(base_model: str) -> torch.nn.Module:
    """Only the UNet: the other exports never touch the text encoder or the VAE."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(
        resolve_model_path(base_model), subfolder="unet", dtype=torch.float32, local_files_only=True
    )


def _apply(unet: torch.nn.Module, edit: CompactEdit) -> None:
    try:
        EditedUnet.of(unet).apply(edit)
    except ValueError as exc:
        raise ErasureInputError(f"the edit does not fit this base model: {exc}") from exc


def _write_diffusers(base_model: str, edit: CompactEdit, folder: Path) -> dict:
    # float32 whatever the base's dtype: the edited weights are not representable in fp16
    # exactly, and the export must give the same bits as applying the edit in memory.
    pipe = load_pipeline(base_model, device=torch.device("cpu"), dtype=torch.float32)
    _apply(pipe.unet, edit)
    pipe.save_pretrained(folder, safe_serialization=True)
    return {"main": None}


def _write_unet_pt(base_model: str, edit: CompactEdit, folder: Path) -> dict:
    unet = _load_base_unet(base_model)
    _apply(unet, edit)
    # A plain tensor dict, so `torch.load` with its default weights_only=True reads it.
    torch.save(dict(unet.state_dict()), folder / UNET_FILE)
    return {"main": UNET_FILE}


def _write_lora(
    base_model: str,
    edit: CompactEdit,
    folder: Path,
    fmt: str,
    rank: int | None,
    tolerance: float,
) -> dict:
    projections = cross_attention_projections(_load_base_unet(base_model))
    _check_fits(edit, projections)
    largest = max(min(m.weight.shape) for m in projections.values())
    if rank is not None and rank > largest:
        raise ErasureInputError(f"lora_rank {rank} exceeds the largest possible rank {largest}")
    approx = lora_approximation(
        edit, {n: m.weight for n, m in projections.items()}, rank=rank, tolerance=tolerance
    )
    if fmt == "lora":
        name, tensors, metadata = LORA_FILE, _diffusers_layout(approx), {"format": "pt"}
    else:
        name, tensors, metadata = KOHYA_LORA_FILE, _kohya_layout(approx), _kohya_metadata(approx)
    save_file(tensors, folder / name, metadata=metadata)
    summary = {
        "rank": approx.rank,
        "relative_error": approx.relative_error,
        "max_relative_error": approx.max_relative_error,
        "tolerance": None if rank is not None else tolerance,
    }
    report = {
        "format": fmt,
        "weights": name,
        "base_model": edit.metadata.get("base_model"),
        **summary,
        "matrices": approx.matrices,
    }
    (folder / LORA_REPORT_FILE).write_text(json.dumps(report, indent=2))
    # diffusers' load_lora_weights takes the folder; ComfyUI and A1111 take the file itself.
    return {"main": None if fmt == "lora" else name, **summary}


def _check_fits(edit: CompactEdit, projections: dict[str, torch.nn.Linear]) -> None:
    width = next(iter(projections.values())).weight.shape[1]
    missing = sorted(set(edit.factors) - set(projections))
    if missing or edit.transform.shape[0] != width:
        raise ErasureInputError(
            "the edit does not fit this base model: it was made for other cross-attention layers"
        )


def _diffusers_layout(approx: LoraApproximation) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in approx.matrices:
        tensors[f"unet.{name}.lora_A.weight"] = approx.down[name].contiguous()
        tensors[f"unet.{name}.lora_B.weight"] = approx.up[name].contiguous()
    return tensors


def _kohya_layout(approx: LoraApproximation) -> dict[str, torch.Tensor]:
    # alpha = rank makes the loaders' scale alpha / rank exactly 1.
    alpha = torch.tensor(float(approx.rank))
    tensors = {}
    for name in approx.matrices:
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = approx.down[name].contiguous()
        tensors[f"{key}.lora_up.weight"] = approx.up[name].contiguous()
        tensors[f"{key}.alpha"] = alpha.clone()
    return tensors


def _kohya_metadata(approx: LoraApproximation) -> dict[str, str]:
    # The sd-scripts header fields A1111 shows in its LoRA browser.
    return {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(approx.rank),
        "ss_network_alpha": str(approx.rank),
    }
