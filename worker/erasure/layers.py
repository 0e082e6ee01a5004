"""The matrices MACE edits: `to_k` and `to_v` of every cross-attention (`attn2`) layer."""

from __future__ import annotations

from torch import nn

EDITED_PROJECTIONS = ("to_k", "to_v")


def cross_attention_projections(unet: nn.Module) -> dict[str, nn.Linear]:
    """Map `<block path>.attn2.to_k|to_v` -> the Linear, in the UNet's module order."""
    found = {}
    for name, module in unet.named_modules():
        if name.endswith(".attn2"):
            for proj in EDITED_PROJECTIONS:
                found[f"{name}.{proj}"] = getattr(module, proj)
    if not found:
        raise ValueError("the UNet has no cross-attention (attn2) layers to edit")
    return found


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Map `<block path>.attn2` -> the Attention module."""
    return {name: m for name, m in unet.named_modules() if name.endswith(".attn2")}
