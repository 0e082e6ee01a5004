"""Solves with symmetric positive definite right factors, never forming an inverse."""

from __future__ import annotations

import torch


class SpdFactor:
    """The Cholesky factor of an SPD matrix A (float64), for repeated solves X = C A^-1.

    Where A is only semi-definite (no regulariser, no preservation term), the smallest ridge
    10^k * mean(diag A) that makes it definite is added; `ridge` says how much, for the log.
    """

    def __init__(self, spd: torch.Tensor):
        spd = spd.double()
        scale = float(spd.diagonal().abs().mean()) or 1.0
        eye = torch.eye(spd.shape[0], dtype=torch.float64)
        self.ridge = 0.0
        for exponent in range(-12, 0):
            factor, info = torch.linalg.cholesky_ex(spd + self.ridge * eye)
            if int(info) == 0:
                self.factor = factor
                return
            self.ridge = scale * 10.0**exponent
        raise ValueError("the statistics matrix is not positive definite even with a ridge")

    def solve_right(self, numerator: torch.Tensor) -> torch.Tensor:
        """C A^-1, computed as (A^-1 C^T)^T since A is symmetric."""
        return torch.cholesky_solve(numerator.double().T, self.factor).T.contiguous()
