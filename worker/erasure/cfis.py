"""Timestep samplers for stage 2: concept-focal importance sampling (CFIS) and uniform.

MACE observes that a concept's layout is decided at intermediate timesteps, so CFIS draws t from
    xi(t) ∝ sigmoid(gamma (t - t1)) - sigmoid(gamma (t - t2)),
a smooth window that is high between t1 and t2 and falls off on both sides.
"""

from __future__ import annotations

import torch

from .errors import ErasureInputError

NUM_TRAIN_TIMESTEPS = 1000


class TimestepSampler:
    """Draws integer timesteps in [0, len(probabilities)) from a fixed discrete density."""

    probabilities: torch.Tensor  # float64, sums to 1

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """`n` independent timesteps (int64, CPU) drawn with `generator`.

        Args:
            n: how many timesteps.
            generator: a seeded CPU `torch.Generator`; the draws are a function of its state.
        """
        return torch.multinomial(self.probabilities, n, replacement=True, generator=generator)


class ConceptFocalSampler(TimestepSampler):
    """The CFIS density over integer t in [0, num_train_timesteps).

    Args:
        gamma: steepness of both sigmoid edges (> 0).
        t1: where the window rises.
        t2: where the window falls (> t1).
        num_train_timesteps: the scheduler's number of training steps.
    """

    def __init__(
        self,
        gamma: float = 0.05,
        t1: float = 200,
        t2: float = 400,
        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    ) -> None:
        if not gamma > 0:
            raise ErasureInputError(f"CFIS gamma must be > 0, got {gamma}")
        if not t1 < t2:
            raise ErasureInputError(f"CFIS needs t1 < t2, got t1={t1}, t2={t2}")
        if num_train_timesteps < 1:
            raise ErasureInputError("num_train_timesteps must be >= 1")
        self.gamma, self.t1, self.t2 = float(gamma), float(t1), float(t2)
        t = torch.arange(num_train_timesteps, dtype=torch.float64)
        density = torch.sigmoid(gamma * (t - t1)) - torch.sigmoid(gamma * (t - t2))
        self.probabilities = density / density.sum()


class UniformTimestepSampler(TimestepSampler):
    """Every t in [0, num_train_timesteps) equally likely (CFIS off)."""

    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> None:
        if num_train_timesteps < 1:
            raise ErasureInputError("num_train_timesteps must be >= 1")
        self.probabilities = torch.full(
            (num_train_timesteps,), 1.0 / num_train_timesteps, dtype=torch.float64
        )


def timestep_sampler(
    cfis: bool,
    *,
    gamma: float = 0.05,
    t1: float = 200,
    t2: float = 400,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> TimestepSampler:
    """CFIS when `cfis` is true, uniform otherwise.

    Args:
        cfis: use concept-focal importance sampling.
        gamma: CFIS edge steepness.
        t1: CFIS window start.
        t2: CFIS window end.
        num_train_timesteps: the scheduler's number of training steps.
    """
    if cfis:
        return ConceptFocalSampler(gamma, t1, t2, num_train_timesteps)
    return UniformTimestepSampler(num_train_timesteps)
