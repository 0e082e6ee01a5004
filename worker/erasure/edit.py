"""The erasure as stored: W* = W0 M + U V for every edited matrix (the spec's compact form).

`edit.safetensors` holds M (d_in x d_in, shared) and per matrix the stacked low-rank factors
U (d_out x R) and V (R x d_in), R = rank x groups; its header carries the metadata (base model
identity, configuration, seed, library versions). Applying it to the base weights is the only way
an erased model is built, in memory or from disk, so both give the same bits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .fusion import FusedEdit
from .layers import cross_attention_projections

EDIT_FILE = "edit.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "mace-edit/1"


@dataclass
class CompactEdit:
    """M, the per-matrix factors (stored dtype) and the metadata that reproduces the edit."""

    transform: torch.Tensor
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_fused(cls, fused: FusedEdit, metadata: dict, dtype=torch.float32) -> CompactEdit:
        factors = {n: (u.to(dtype), v.to(dtype)) for n, (u, v) in fused.factors.items()}
        return cls(fused.transform.to(dtype), factors, metadata)

    @property
    def matrix_names(self) -> list[str]:
        return list(self.factors)

    def then(self, child: CompactEdit) -> CompactEdit:
        """This edit followed by `child` (made on top of it), still relative to the same W0:
        (W0 M_p + U_p V_p) M_c + U_c V_c = W0 (M_p M_c) + [U_p U_c] [V_p M_c; V_c]."""
        m_child = child.transform.double()
        factors = {}
        for name in dict.fromkeys([*self.factors, *child.factors]):
            ups, downs = [], []
            if name in self.factors:
                up, down = self.factors[name]
                ups.append(up.double())
                downs.append(down.double() @ m_child)
            if name in child.factors:
                ups.append(child.factors[name][0].double())
                downs.append(child.factors[name][1].double())
            factors[name] = (
                torch.cat(ups, 1).to(self.transform.dtype),
                torch.cat(downs).to(self.transform.dtype),
            )
        transform = (self.transform.double() @ m_child).to(self.transform.dtype)
        return CompactEdit(transform, factors, {**child.metadata, "parent": self.metadata})

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"transform": self.transform.contiguous()}
        for name, (up, down) in self.factors.items():
            out[f"factors.{name}.up"] = up.contiguous()
            out[f"factors.{name}.down"] = down.contiguous()
        return out

    def edited_weight(self, name: str, base_weight: torch.Tensor) -> torch.Tensor:
        """W0 M + U V in float64, on the CPU, returned in W0's dtype and device."""
        base = base_weight.detach().to("cpu", torch.float64)
        weight = base @ self.transform.double()
        up, down = self.factors.get(name, (None, None))
        if up is not None and up.shape[1]:
            weight += up.double() @ down.double()
        return weight.to(base_weight.dtype).to(base_weight.device)

    def save(self, directory: str | Path) -> Path:
        """Write edit.safetensors (metadata in its header); returns its path."""
        path = Path(directory) / EDIT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            self.tensors(), path, metadata={"format": FORMAT, "mace": json.dumps(self.metadata)}
        )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> CompactEdit:
        """Read an edit written by `save` (a folder or the safetensors file itself)."""
        from safetensors import safe_open

        path = Path(directory)
        path = path / EDIT_FILE if path.is_dir() else path
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a MACE edit (format {header.get('format')!r})")
        tensors = load_file(path)
        factors = {}
        for key in tensors:
            if key.startswith("factors.") and key.endswith(".up"):
                name = key[len("factors.") : -len(".up")]
                factors[name] = (tensors[key], tensors[f"factors.{name}.down"])
        return cls(tensors["transform"], factors, json.loads(header.get("mace", "{}")))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EditedUnet:
    """Applies edits to a UNet in place and restores its base weights (kept once, on the CPU).

    A pipeline cache can keep one base pipeline warm and switch between erased models by applying
    their edits here, without reloading anything.
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.projections = cross_attention_projections(unet)
        self.base_weights = {
            n: m.weight.detach().to("cpu", copy=True) for n, m in self.projections.items()
        }
        self.applied: CompactEdit | None = None

    @classmethod
    def of(cls, unet: torch.nn.Module) -> EditedUnet:
        """The one EditedUnet of this UNet (created on first use), so base weights are kept once."""
        existing = getattr(unet, "_mace_edited", None)
        if existing is None:
            existing = cls(unet)
            unet._mace_edited = existing
        return existing

    @torch.no_grad()
    def apply(self, edit: CompactEdit) -> None:
        missing = set(edit.factors) - set(self.projections)
        if missing or edit.transform.shape[0] != next(iter(self.base_weights.values())).shape[1]:
            raise ValueError("this edit was made for a model with other cross-attention layers")
        for name, module in self.projections.items():
            base = self.base_weights[name].to(module.weight.device, module.weight.dtype)
            module.weight.copy_(edit.edited_weight(name, base))
        self.applied = edit

    @torch.no_grad()
    def restore(self) -> None:
        for name, module in self.projections.items():
            module.weight.copy_(
                self.base_weights[name].to(module.weight.device, module.weight.dtype)
            )
        self.applied = None
