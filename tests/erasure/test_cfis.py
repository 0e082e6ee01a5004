import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from worker.erasure.cfis import (
    ConceptFocalSampler,
    UniformTimestepSampler,
    timestep_sampler,
)
from worker.erasure.errors import ErasureInputError

DRAWS = 200_000


def _chi_square_p(samples: torch.Tensor, probabilities: torch.Tensor) -> float:
    """Goodness of fit of integer samples to a discrete density, with neighbouring timesteps
    merged until every bin expects at least 5 draws (the test's validity condition)."""
    observed = np.bincount(samples.numpy(), minlength=len(probabilities)).astype(float)
    expected = probabilities.numpy() * len(samples)
    bins_obs, bins_exp, acc_obs, acc_exp = [], [], 0.0, 0.0
    for obs, exp in zip(observed, expected, strict=True):
        acc_obs, acc_exp = acc_obs + obs, acc_exp + exp
        if acc_exp >= 5:
            bins_obs.append(acc_obs)
            bins_exp.append(acc_exp)
            acc_obs = acc_exp = 0.0
    bins_obs[-1] += acc_obs
    bins_exp[-1] += acc_exp
    return chisquare(bins_obs, bins_exp).pvalue


def test_cfis_samples_follow_its_density():
    sampler = ConceptFocalSampler()
    samples = sampler.sample(DRAWS, torch.Generator().manual_seed(0))
    assert samples.dtype == torch.int64
    assert samples.min() >= 0 and samples.max() < 1000
    assert _chi_square_p(samples, sampler.probabilities) > 1e-3


def test_goodness_of_fit_rejects_the_wrong_density():
    # The same test must be able to fail: uniform draws do not fit the CFIS density.
    uniform = UniformTimestepSampler().sample(DRAWS, torch.Generator().manual_seed(0))
    assert _chi_square_p(uniform, ConceptFocalSampler().probabilities) < 1e-3


def test_uniform_sampler_is_uniform():
    sampler = UniformTimestepSampler()
    assert torch.allclose(sampler.probabilities, torch.full((1000,), 1e-3, dtype=torch.float64))
    samples = sampler.sample(DRAWS, torch.Generator().manual_seed(1))
    assert _chi_square_p(samples, sampler.probabilities) > 1e-3


def test_density_is_normalised_and_peaks_between_t1_and_t2():
    probabilities = ConceptFocalSampler(gamma=0.05, t1=200, t2=400).probabilities
    assert probabilities.shape == (1000,)
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert 200 <= int(probabilities.argmax()) <= 400
    assert probabilities[300] > 10 * probabilities[100]
    assert probabilities[300] > 10 * probabilities[600]
    inside = probabilities[200:401].sum().item()
    assert inside > 0.8


def test_density_formula():
    sampler = ConceptFocalSampler(gamma=0.1, t1=100, t2=700, num_train_timesteps=800)
    t = np.arange(800)
    density = 1 / (1 + np.exp(-0.1 * (t - 100))) - 1 / (1 + np.exp(-0.1 * (t - 700)))
    np.testing.assert_allclose(sampler.probabilities.numpy(), density / density.sum(), rtol=1e-10)


def test_same_seed_same_draws():
    sampler = ConceptFocalSampler()
    first = sampler.sample(64, torch.Generator().manual_seed(5))
    again = sampler.sample(64, torch.Generator().manual_seed(5))
    other = sampler.sample(64, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_switch_between_cfis_and_uniform():
    assert isinstance(timestep_sampler(True), ConceptFocalSampler)
    assert isinstance(timestep_sampler(False), UniformTimestepSampler)


@pytest.mark.parametrize(
    "options", [{"t1": 400, "t2": 200}, {"gamma": 0.0}, {"num_train_timesteps": 0}]
)
def test_invalid_settings_are_rejected(options):
    with pytest.raises(ErasureInputError):
        ConceptFocalSampler(**options)
