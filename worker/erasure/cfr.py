"""Stage 1: closed-form cross-attention refinement (CFR) with one shared d_in x d_in transform.

W' = W0 (G_gf + lam I + s P)(G_ff + lam I + s P)^-1 = W0 T   for every edited matrix.

A singular or ill-conditioned right factor gets a ridge (see linalg.py) that acts as extra lam in
both factors: T stays the identity, W' stays W0, along directions no embedding occupies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import Conditioning, SpdFactor
from .statistics import CfrStatistics, SecondMoment


@dataclass
class Refinement:
    """The shared transform T (float64) and how it was obtained."""

    transform: torch.Tensor
    cfr_lambda: float
    preservation_weight: float
    conditioning: Conditioning

    @property
    def ridge(self) -> float:
        """Added to lam in both factors; 0 when the system was well conditioned."""
        return self.conditioning.ridge

    def log_lines(self) -> list[str]:
        lines = [
            f"CFR: lambda={self.cfr_lambda:g}, preservation weight={self.preservation_weight:g}"
        ]
        if self.ridge:
            lines.append(f"CFR: {self.conditioning.describe()}")
        return lines


def weighted_preservation(
    preservation: SecondMoment | None, weight: float, reference_tokens: int
) -> torch.Tensor | float:
    """s P stated per token: s * (reference tokens / preservation tokens) * sum e^p e^p^T.

    With the mean, the term does not grow with the number of captions; scaled by the number of
    target tokens it keeps its balance against them, so s = 1 weighs the preservation set as much
    as all target pairs together.
    """
    if preservation is None or weight == 0 or preservation.count == 0:
        return 0.0
    return weight * reference_tokens * preservation.mean


def closed_form_refine(
    stats: CfrStatistics,
    *,
    cfr_lambda: float,
    preservation: SecondMoment | None = None,
    preservation_weight: float = 0.0,
) -> Refinement:
    """Solve for T from the paired statistics (float64, Cholesky), with a ridge where needed.

    Args:
        stats: G_ff and G_gf over all paired token positions.
        cfr_lambda: the ridge toward W0 (lam).
        preservation: P, the preservation prompts' second moment.
        preservation_weight: s, per token (see `weighted_preservation`).
    """
    width = stats.cross.shape[0]
    regulariser = cfr_lambda * torch.eye(width, dtype=torch.float64)
    regulariser = regulariser + weighted_preservation(
        preservation, preservation_weight, stats.pair_count
    )
    factor = SpdFactor(stats.target.total + regulariser)
    ridge = factor.ridge * torch.eye(width, dtype=torch.float64)
    transform = factor.solve_right(stats.cross + regulariser + ridge)
    return Refinement(transform, cfr_lambda, preservation_weight, factor.conditioning)


def refine_weight(weight: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """W0 T in float64, returned in W0's dtype."""
    return (weight.double() @ transform).to(weight.dtype)
