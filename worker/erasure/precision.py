"""Which float type stage 2 computes the frozen UNet in.

The trainable LoRA factors and their optimiser state are always float32 (`routed_lora`,
`concept_optimizer`): Adam's small updates vanish in fp16 factors. The frozen UNet runs under
autocast in bf16 where the GPU supports it (fp16's range overflows more easily in the backward
pass), fp16 on older GPUs, and in its own dtype on the CPU.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .errors import ErasureInputError

TRAINING_PRECISIONS = ("auto", "bf16", "fp16", "off")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_training_precision(value) -> None:
    if value not in TRAINING_PRECISIONS:
        raise ErasureInputError(
            f"training_precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {value!r}"
        )


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type for `precision` on `device`; None runs the UNet in its own dtype.

    Args:
        precision: "auto" (bf16 on a GPU that has it, fp16 on other GPUs, off on the CPU),
            "bf16", "fp16" or "off".
        device: where the UNet is.
    """
    check_training_precision(precision)
    if precision == "off":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast block for `dtype` on `device`, or nothing when `dtype` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
