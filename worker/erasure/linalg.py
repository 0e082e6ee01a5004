"""Solves with symmetric positive definite right factors, never forming an inverse.

A solve X = C A^-1 whose A is singular or ill-conditioned gives an X with huge entries along the
directions A barely sees. Text embeddings carry no mass there, so X is right in exact arithmetic,
but stored in float32 or applied to fp16 weights those entries swamp the result (a final
LayerNorm without bias makes every embedding orthogonal to the all-ones vector: condition ~1e15).
Such an A gets a ridge scaled to its trace, the smallest of a short ladder that brings its
condition number under `MAX_CONDITION`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Largest condition number kept as it is. Directions a ridge changes carry under 1e-10 of the
# largest direction's energy (1e-5 of its amplitude). Measured on the CFR systems of the tiny model
# and of the SD-1.4-architecture bench model (style defaults): their informative directions sit
# at condition <= 5e6, the rounding noise of fp16 embeddings at 6e8-2e10 and of fp32 embeddings at
# 1e15-1e16. Ridged to condition <= 6e11, the stored edit's fp16 keys are at fp16 rounding
# (5e-4-7e-4, the base weight's own); keys of actual embeddings move by 5e-5 at 1e10 but 5e-3 at
# 1e8 on the bench model.
MAX_CONDITION = 1e10
# Ridge candidates, in units of trace(A) / d. cond(A + r I) <= d / epsilon + 1, so the last rung
# meets MAX_CONDITION for any width up to 10^6.
RIDGE_LADDER = tuple(10.0**exponent for exponent in range(-12, -3))
# Power / inverse iteration steps of the eigenvalue estimates: each costs one d x d matrix-vector
# product or two triangular solves.
ITERATIONS = 64


@dataclass(frozen=True)
class Conditioning:
    """How a system was made solvable: the ridge added (0 when none) and why."""

    ridge: float
    epsilon: float  # ridge / (trace / d)
    condition_before: float
    condition_after: float
    singular: bool  # the smallest eigenvalue is within float64 rounding of the largest

    @property
    def reason(self) -> str:
        return "singular" if self.singular else "ill-conditioned"

    def describe(self) -> str:
        """One log line's worth: why a ridge was added, how much, the condition before/after."""
        return (
            f"the system was {self.reason} (condition number {self.condition_before:.3g}); "
            f"added a ridge of {self.ridge:.3g} ({self.epsilon:g} x trace/d), "
            f"condition number now {self.condition_after:.3g}"
        )

    def to_dict(self) -> dict:
        return {
            "ridge": self.ridge,
            "epsilon": self.epsilon,
            "reason": self.reason if self.ridge else "",
            "condition_before": _finite_or_none(self.condition_before),
            "condition_after": _finite_or_none(self.condition_after),
        }


class SpdFactor:
    """The Cholesky factor of an SPD matrix A (float64), for repeated solves X = C A^-1.

    Where A is singular or its condition number exceeds `max_condition`, `ridge` * I is added
    first (see the module docstring); a caller whose regulariser is lam * I in both factors adds
    `ridge` * I to its numerator too, so the ridge acts as a larger lam. The condition number is
    estimated by power and inverse iteration (milliseconds; a CPU eigendecomposition of a
    768 x 768 matrix takes longer than the rest of CFR).
    """

    def __init__(self, spd: torch.Tensor, max_condition: float = MAX_CONDITION):
        spd = spd.double().cpu()
        largest = _largest_eigenvalue(spd)
        factor, info = torch.linalg.cholesky_ex(spd)
        # A failed Cholesky means an eigenvalue at about 0 or below.
        smallest = _smallest_eigenvalue(factor) if int(info) == 0 else 0.0
        before = _condition(smallest, largest)
        singular = smallest <= largest * spd.shape[0] * torch.finfo(torch.float64).eps
        scale = float(spd.diagonal().abs().mean()) or 1.0  # trace / d
        eye = torch.eye(spd.shape[0], dtype=torch.float64)
        for epsilon in (0.0, *RIDGE_LADDER):
            ridge = epsilon * scale
            if _condition(smallest + ridge, largest + ridge) > max_condition:
                continue  # this rung cannot be enough: cond(A + r I) = (max + r) / (min + r)
            if epsilon:
                factor, info = torch.linalg.cholesky_ex(spd + ridge * eye)
            if int(info) != 0:
                continue
            after = _condition(_smallest_eigenvalue(factor), largest + ridge)
            if after <= max_condition:
                self.factor = factor
                self.conditioning = Conditioning(ridge, epsilon, before, after, singular)
                return
        raise ValueError("the statistics matrix is not positive definite even with a ridge")

    @property
    def ridge(self) -> float:
        return self.conditioning.ridge

    def solve_right(self, numerator: torch.Tensor) -> torch.Tensor:
        """C A^-1, computed as (A^-1 C^T)^T since A is symmetric."""
        return torch.cholesky_solve(numerator.double().T, self.factor).T.contiguous()


def _start_vector(width: int) -> torch.Tensor:
    """A fixed random unit vector (seeded: the same estimate every run)."""
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(width, 1, generator=generator, dtype=torch.float64)
    return vector / vector.norm()


def _largest_eigenvalue(spd: torch.Tensor, iterations: int = ITERATIONS) -> float:
    """Power iteration's Rayleigh quotient (at most the largest eigenvalue, and close to it)."""
    vector = _start_vector(spd.shape[0])
    value = 0.0
    for _ in range(iterations):
        image = spd @ vector
        value = float(vector.T @ image)
        norm = image.norm()
        if norm == 0:
            return 0.0
        vector = image / norm
    return value


def _smallest_eigenvalue(factor: torch.Tensor, iterations: int = ITERATIONS) -> float:
    """Inverse iteration with the Cholesky factor L (A = L L^T): 1 / the Rayleigh quotient of
    A^-1 (at least the smallest eigenvalue, and close to it)."""
    upper = factor.mT.contiguous()
    vector = _start_vector(factor.shape[0])
    inverse = math.inf
    for _ in range(iterations):
        # Two triangular solves; cholesky_solve on one vector is ~30x slower on the CPU.
        half = torch.linalg.solve_triangular(factor, vector, upper=False)
        image = torch.linalg.solve_triangular(upper, half, upper=True)
        inverse = float(vector.T @ image)
        vector = image / image.norm()
    return 1.0 / inverse if inverse > 0 else 0.0


def _condition(smallest: float, largest: float) -> float:
    """largest / smallest eigenvalue; infinite for a singular or indefinite matrix."""
    return largest / smallest if smallest > 0 else math.inf


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a singular matrix's condition number is written as null."""
    return value if math.isfinite(value) else None
