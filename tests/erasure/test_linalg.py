"""SPD solves: a ridge scaled to the trace only where the system is singular or ill-conditioned."""

from __future__ import annotations

import json
import math

import pytest
import torch

from worker.erasure.linalg import MAX_CONDITION, RIDGE_LADDER, SpdFactor

WIDTH = 16


def spd_with_spectrum(eigenvalues) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T for a seeded random rotation Q."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(WIDTH, WIDTH, generator=generator, dtype=torch.float64))
    values = torch.as_tensor(eigenvalues, dtype=torch.float64)
    return (q * values) @ q.T


def test_well_conditioned_system_is_solved_as_it_is():
    spd = spd_with_spectrum(torch.logspace(0, 4, WIDTH))
    numerator = torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(1)).double()
    factor = SpdFactor(spd)
    assert factor.ridge == 0.0 and not factor.conditioning.singular
    assert math.isclose(factor.conditioning.condition_before, 1e4, rel_tol=1e-6)
    expected = torch.linalg.solve(spd, numerator.T).T
    assert torch.allclose(factor.solve_right(numerator), expected, rtol=1e-10, atol=0)


def test_ill_conditioned_system_gets_the_smallest_sufficient_ridge():
    spd = spd_with_spectrum(torch.logspace(-9, 3, WIDTH))  # condition 1e12, not singular
    factor = SpdFactor(spd)
    conditioning = factor.conditioning
    scale = float(spd.trace()) / WIDTH
    assert conditioning.reason == "ill-conditioned"
    assert math.isclose(conditioning.ridge, conditioning.epsilon * scale)
    assert conditioning.condition_after <= MAX_CONDITION < conditioning.condition_before
    smaller = RIDGE_LADDER[RIDGE_LADDER.index(conditioning.epsilon) - 1] * scale
    assert (1e3 + smaller) / (1e-9 + smaller) > MAX_CONDITION  # one rung less is not enough
    shifted = spd + conditioning.ridge * torch.eye(WIDTH, dtype=torch.float64)
    # An estimate (power and inverse iteration), close to the exact condition number.
    assert torch.linalg.cond(shifted) == pytest.approx(conditioning.condition_after, rel=1e-2)
    line = conditioning.describe()
    assert "ill-conditioned" in line and "condition number now" in line


def test_singular_and_zero_systems_are_made_definite_and_say_so():
    singular = spd_with_spectrum([0.0] * 3 + [1.0] * (WIDTH - 3))
    for spd in (singular, torch.zeros(WIDTH, WIDTH, dtype=torch.float64)):
        factor = SpdFactor(spd)
        assert factor.ridge > 0 and factor.conditioning.singular
        assert factor.conditioning.condition_after <= MAX_CONDITION
        assert "singular" in factor.conditioning.describe()
        record = factor.conditioning.to_dict()
        assert record["reason"] == "singular" and record["ridge"] == factor.ridge
        json.dumps(record, allow_nan=False)  # a singular matrix's condition is written as null


def test_a_stricter_threshold_asks_for_a_larger_ridge():
    spd = spd_with_spectrum(torch.logspace(-9, 3, WIDTH))
    assert SpdFactor(spd, max_condition=1e6).ridge > SpdFactor(spd).ridge


def test_an_indefinite_matrix_is_refused():
    with pytest.raises(ValueError, match="not positive definite"):
        SpdFactor(spd_with_spectrum([-1.0] + [1.0] * (WIDTH - 1)))
