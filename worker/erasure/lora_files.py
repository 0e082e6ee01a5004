"""LoRA files as (up, down) factors per edited matrix: diffusers/peft and kohya layouts."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .errors import ErasureInputError

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# (up, down) per edited matrix name; the weight delta is exactly up @ down.
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]

_EDITED = re.compile(r"\.attn2\.to_[kv]$")
_KOHYA_ATTN2 = re.compile(
    r"^(down_blocks_\d+|up_blocks_\d+|mid_block)_attentions_(\d+)"
    r"_transformer_blocks_(\d+)_attn2_(to_k|to_v)$"
)
_DOWN_SUFFIXES = ("lora_A.weight", "lora.down.weight", "lora_down.weight")
_UP_SUFFIXES = ("lora_B.weight", "lora.up.weight", "lora_up.weight")


def save_lora_factors(factors: Factors, directory: str | Path) -> Path:
    """Write (up, down) factors as `pytorch_lora_weights.safetensors` in diffusers' layout.

    `StableDiffusionPipeline.load_lora_weights(directory)` loads it; alpha equals the rank, so
    the loaded delta is exactly up @ down.

    Args:
        factors: matrix name -> (up, down), the scale already folded into up.
        directory: folder to write into (created if missing).
    """
    from diffusers import StableDiffusionPipeline

    if not factors:
        raise ValueError("no LoRA factors to save")
    layers = {}
    for name, (up, down) in factors.items():
        layers[f"{name}.lora_A.weight"] = down.detach().float().cpu().contiguous()
        layers[f"{name}.lora_B.weight"] = up.detach().float().cpu().contiguous()
    ranks = {down.shape[0] for _, down in factors.values()}
    metadata = {"r": max(ranks), "lora_alpha": max(ranks), "target_modules": sorted(factors)}
    if len(ranks) > 1:  # stacked factors of several groups: alpha = rank for every matrix
        metadata["rank_pattern"] = {n: d.shape[0] for n, (_, d) in factors.items()}
        metadata["alpha_pattern"] = metadata["rank_pattern"]
    StableDiffusionPipeline.save_lora_weights(
        str(directory),
        unet_lora_layers=layers,
        weight_name=LORA_WEIGHT_NAME,
        unet_lora_adapter_metadata=metadata,
    )
    return Path(directory) / LORA_WEIGHT_NAME


def load_lora_factors(path: str | Path, matrix_names: Sequence[str] | None = None) -> Factors:
    """The cross-attention to_k/to_v factors of a LoRA safetensors file, scale folded into up.

    Reads diffusers/peft keys (`unet.<module>.lora_A.weight`, `.lora.down.weight`, the older
    `.processor.to_k_lora.down.weight`) and kohya keys (`lora_unet_<module_with_underscores>
    .lora_down.weight`, `.lora_up.weight`, `.alpha`). The scale is alpha / rank from an `.alpha`
    entry, else from diffusers' adapter metadata, else 1 (what diffusers assumes). Keys of other
    modules (text encoder, self-attention, ...) are skipped with a warning.

    Args:
        path: the safetensors file.
        matrix_names: the UNet's edited matrices; names outside it raise `ErasureInputError`.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise ErasureInputError(f"{Path(path).name} is not a readable safetensors file") from exc
    parts: dict[str, dict[str, torch.Tensor]] = {}
    skipped = []
    for key, tensor in tensors.items():
        parsed = _parse_lora_key(key)
        if parsed is None:
            skipped.append(key)
        else:
            parts.setdefault(parsed[0], {})[parsed[1]] = tensor
    if skipped:
        logger.warning(
            "%s: skipped %d keys outside cross-attention to_k/to_v, e.g. %s",
            Path(path).name,
            len(skipped),
            ", ".join(skipped[:3]),
        )
    if not parts:
        raise ErasureInputError(f"{Path(path).name} has no cross-attention to_k/to_v LoRA weights")
    if matrix_names is not None:
        unknown = sorted(set(parts) - set(matrix_names))
        if unknown:
            raise ErasureInputError(
                f"{Path(path).name} targets matrices this model does not have, e.g. {unknown[0]}"
            )
    alpha_of = _metadata_alpha(metadata)
    return {name: _factors_of(name, found, alpha_of) for name, found in parts.items()}


def _parse_lora_key(key: str) -> tuple[str, str] | None:
    """(matrix name, "up" | "down" | "alpha") for a cross-attention to_k/to_v key, else None."""
    if key.startswith("lora_unet_"):
        module, _, suffix = key[len("lora_unet_") :].partition(".")
        match = _KOHYA_ATTN2.match(module)
        if match is None:
            if re.search(r"_attn2_to_[kv]$", module):
                raise ErasureInputError(
                    f"{key} names its block in the original (non-diffusers) layout; convert the "
                    "file to diffusers block names first"
                )
            return None
        block, attention, transformer, projection = match.groups()
        block = re.sub(r"_(\d+)$", r".\1", block)
        module = (
            f"{block}.attentions.{attention}.transformer_blocks.{transformer}.attn2.{projection}"
        )
    else:
        for prefix in ("unet.", "base_model.model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return None
        key = re.sub(r"\.processor\.(to_[kvq]|to_out)_lora\.", r".\1.lora.", key)
        module, suffix = _split_suffix(key)
    if not _EDITED.search(module):
        return None
    if suffix in _DOWN_SUFFIXES:
        return module, "down"
    if suffix in _UP_SUFFIXES:
        return module, "up"
    if suffix == "alpha":
        return module, "alpha"
    raise ErasureInputError(
        f"unsupported LoRA entry {key!r}: only plain LoRA (up/down/alpha) can be fused"
    )


def _split_suffix(key: str) -> tuple[str, str]:
    for suffix in (*_DOWN_SUFFIXES, *_UP_SUFFIXES, "alpha"):
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    module, _, last = key.rpartition(".")
    if last == "weight":  # e.g. `.lora_magnitude_vector.weight`: keep it as an unknown suffix
        module, _, kind = module.rpartition(".")
        return module, f"{kind}.weight"
    return module, last


def _metadata_alpha(metadata: dict[str, str]) -> Callable[[str, int], float]:
    """alpha for a matrix of a given rank, from diffusers' `lora_adapter_metadata` if present."""
    from peft.utils.other import get_pattern_key

    config = json.loads(metadata.get("lora_adapter_metadata", "{}") or "{}")
    unet = {k[len("unet.") :]: v for k, v in config.items() if k.startswith("unet.")}
    default_alpha = unet.get("lora_alpha")
    patterns = unet.get("alpha_pattern") or {}
    rslora = bool(unet.get("use_rslora"))

    def alpha(name: str, rank: int) -> float:
        if patterns:
            key = get_pattern_key(list(patterns), name)
            if key in patterns:
                return float(patterns[key]) * (math.sqrt(rank) if rslora else 1.0)
        if default_alpha is None:
            return float(rank)
        return float(default_alpha) * (math.sqrt(rank) if rslora else 1.0)

    return alpha


def _factors_of(
    name: str, found: dict[str, torch.Tensor], alpha_of: Callable[[str, int], float]
) -> tuple[torch.Tensor, torch.Tensor]:
    if "up" not in found or "down" not in found:
        raise ErasureInputError(f"the LoRA of {name} lacks its up or down weight")
    up, down = found["up"].float(), found["down"].float()
    up, down = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)  # 1x1 conv forms
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise ErasureInputError(
            f"the LoRA of {name} has mismatched ranks {up.shape} x {down.shape}"
        )
    alpha = float(found["alpha"]) if "alpha" in found else alpha_of(name, rank)
    return (up * (alpha / rank)).contiguous(), down.contiguous()
