"""Stage 3: closed-form fusion of the groups' LoRAs into one edit, in its compact form.

    B  = sum_i G_i + lam_f I + s_f P
    M  = [T (sum_i G_i + lam_f I) + s_f P] B^-1            shared by every edited matrix
    W* = W0 M + sum_i up_i (down_i G_i B^-1)               per matrix, rank r per group

No LoRA is merged into a pipeline: each group only contributes down_i G_i (r x d_in).
Where B is singular or ill-conditioned (fusion_lambda 0), its ridge (linalg.py) is added to lam_f
on both sides, so M follows T along directions no prompt occupies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .cfr import weighted_preservation
from .linalg import Conditioning, SpdFactor
from .statistics import SecondMoment

LoraFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # matrix name -> (up, down)


@dataclass
class FusedEdit:
    """The compact form: M and, per matrix, the stacked factors (U = [up_i], V = [v_i])."""

    transform: torch.Tensor
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    conditioning: Conditioning | None = None  # None: no solve (no stage 3)

    @property
    def ridge(self) -> float:
        """Added to lam_f in both factors; 0 when B was well conditioned."""
        return self.conditioning.ridge if self.conditioning else 0.0


def fuse_loras(
    transform: torch.Tensor,
    grams: Iterable[SecondMoment],
    loras: Sequence[LoraFactors],
    *,
    fusion_lambda: float,
    preservation: SecondMoment | None = None,
    preservation_weight: float = 0.0,
) -> FusedEdit:
    """Fuse per-group LoRAs trained on top of W' = W0 T.

    Args:
        transform: T from stage 1 (identity when CFR was skipped).
        grams: G_i per group, in the order of `loras`; consumed one at a time.
        loras: per group, matrix name -> (up, down) with the LoRA scale folded into up.
        fusion_lambda: lam_f, the ridge toward W'.
        preservation: P.
        preservation_weight: s_f, per token (see `cfr.weighted_preservation`).
    """
    width = transform.shape[0]
    gram_sum = torch.zeros(width, width, dtype=torch.float64)
    ups, projected = _stacked_buffers(loras, width)
    offsets = dict.fromkeys(ups, 0)
    token_count = 0
    for lora, gram in zip(loras, grams, strict=True):
        gram_sum += gram.total
        token_count += gram.count
        for name, (up, down) in lora.items():  # a LoRA file may leave some matrices out
            rows = slice(offsets[name], offsets[name] + down.shape[0])
            ups[name][:, rows] = up
            torch.mm(down.double(), gram.total, out=projected[name][rows])
            offsets[name] = rows.stop
    eye = torch.eye(width, dtype=torch.float64)
    preserved = weighted_preservation(preservation, preservation_weight, token_count)
    factor = SpdFactor(gram_sum + fusion_lambda * eye + preserved)
    toward_refined = gram_sum + (fusion_lambda + factor.ridge) * eye
    shared = factor.solve_right(transform.double() @ toward_refined + preserved)
    factors = {name: (ups[name], factor.solve_right(rows)) for name, rows in projected.items()}
    return FusedEdit(shared, factors, factor.conditioning)


def stack_unfused(transform: torch.Tensor, loras: Sequence[LoraFactors]) -> FusedEdit:
    """Without stage 3: W' + sum_i up_i down_i, the LoRAs simply added (same compact form)."""
    factors = {
        name: (
            torch.cat([lora[name][0].double() for lora in loras if name in lora], dim=1),
            torch.cat([lora[name][1].double() for lora in loras if name in lora], dim=0),
        )
        for name in _matrix_names(loras)
    }
    return FusedEdit(transform.double(), factors)


def _stacked_buffers(
    loras: Sequence[LoraFactors], width: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """U (d_out x total rank) and the rows down_i G_i (total rank x d_in), per matrix, allocated
    once: small per-group results kept between the groups' multi-MB temporaries would fragment
    the heap, which then grows by about a Gram matrix per group."""
    ups, projected = {}, {}
    for name in _matrix_names(loras):
        present = [lora[name] for lora in loras if name in lora]
        rank = sum(down.shape[0] for _, down in present)
        ups[name] = torch.empty(present[0][0].shape[0], rank, dtype=torch.float64)
        projected[name] = torch.empty(rank, width, dtype=torch.float64)
    return ups, projected


def _matrix_names(loras: Sequence[LoraFactors]) -> list[str]:
    """Every matrix any group's LoRA touches, in first-seen order."""
    return list(dict.fromkeys(name for lora in loras for name in lora))
