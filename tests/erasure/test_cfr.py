"""Stage 1: the CFR solution against its normal equations and its objective, from raw embeddings."""

from __future__ import annotations

import pytest
import torch

from worker.erasure.base_model import load_pipeline, model_identity
from worker.erasure.cfr import closed_form_refine, refine_weight, weighted_preservation
from worker.erasure.concepts import ConceptGroup
from worker.erasure.encoding import PromptEncoder
from worker.erasure.layers import cross_attention_projections
from worker.erasure.pairing import TokenCounter, group_prompt_pairs
from worker.erasure.preservation import default_preservation_prompts, preservation_statistics
from worker.erasure.statistics import cfr_statistics

GROUPS = [ConceptGroup(("cat", "kitten")), ConceptGroup(("van gogh",), "style")]


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir))
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    identity = model_identity(str(tiny_model_dir))
    preservation = preservation_statistics(encoder, identity, default_preservation_prompts()[:40])
    weights = {
        n: m.weight.detach().double() for n, m in cross_attention_projections(pipe.unet).items()
    }
    return pipe, encoder, preservation, weights


def paired_embeddings(encoder, groups):
    """The (e^f, e^g) rows CFR pairs, gathered explicitly (no streaming statistics)."""
    counter = TokenCounter(encoder.tokenizer)
    f_rows, g_rows = [], []
    for group in groups:
        for pair in group_prompt_pairs(counter, group):
            f, g = encoder.encode([pair.target_prompt, pair.anchor_prompt]).double()
            f_rows.append(f[list(pair.target_positions)])
            g_rows.append(g[list(pair.anchor_positions)])
    return torch.cat(f_rows), torch.cat(g_rows)


def cfr_objective(weight, base, f, g, lam, pres_rows, pres_weight):
    """The CFR objective, evaluated term by term."""
    value = ((f @ weight.T - g @ base.T) ** 2).sum() + lam * ((weight - base) ** 2).sum()
    return value + pres_weight * ((pres_rows @ (weight - base).T) ** 2).sum()


def test_solution_satisfies_normal_equations_and_beats_alternatives(setup):
    pipe, encoder, preservation, weights = setup
    lam, s = 3.0, 0.5
    stats = cfr_statistics(encoder, GROUPS)
    refinement = closed_form_refine(
        stats, cfr_lambda=lam, preservation=preservation, preservation_weight=s
    )
    f, g = paired_embeddings(encoder, GROUPS)
    assert stats.pair_count == f.shape[0]
    pres_sum = weighted_preservation(preservation, s, stats.pair_count)
    eye = torch.eye(f.shape[1], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    # sqrt of the weighted preservation moment, so the objective can be evaluated as rows.
    evals, evecs = torch.linalg.eigh(pres_sum)
    pres_rows = (evecs * evals.clamp_min(0).sqrt()).T
    for name, base in list(weights.items())[:4]:
        refined = base @ refinement.transform
        lhs = refined @ (f.T @ f + lam * eye + pres_sum)
        rhs = base @ (g.T @ f + lam * eye + pres_sum)
        assert (lhs - rhs).norm() / rhs.norm() < 1e-6, name
        best = cfr_objective(refined, base, f, g, lam, pres_rows, 1.0)
        assert best < cfr_objective(base, base, f, g, lam, pres_rows, 1.0)
        for _ in range(5):
            nudge = 1e-3 * torch.randn(base.shape, generator=generator, dtype=torch.float64)
            assert best < cfr_objective(refined + nudge, base, f, g, lam, pres_rows, 1.0)


def test_shared_transform_equals_a_least_squares_solve_per_matrix(setup):
    _, encoder, _, weights = setup
    lam = 2.0
    stats = cfr_statistics(encoder, GROUPS)
    transform = closed_form_refine(stats, cfr_lambda=lam).transform
    f, g = paired_embeddings(encoder, GROUPS)
    width = f.shape[1]
    design = torch.cat([f, lam**0.5 * torch.eye(width, dtype=torch.float64)])
    for name, base in weights.items():
        target = torch.cat([g @ base.T, lam**0.5 * base.T])
        direct = torch.linalg.lstsq(design, target).solution.T
        shared = refine_weight(base, transform)
        assert torch.allclose(shared, direct, rtol=1e-7, atol=1e-9), name


def test_huge_lambda_leaves_base_weights_in_place(setup):
    _, encoder, _, weights = setup
    stats = cfr_statistics(encoder, GROUPS)
    transform = closed_form_refine(stats, cfr_lambda=1e15).transform
    eye = torch.eye(transform.shape[0], dtype=torch.float64)
    assert (transform - eye).abs().max() < 1e-8
    for base in weights.values():
        assert torch.allclose(refine_weight(base, transform), base, atol=1e-8)


def test_no_regulariser_adds_a_logged_ridge_only_when_singular(setup):
    _, encoder, _, _ = setup
    stats = cfr_statistics(encoder, [ConceptGroup(("cat",))])
    refinement = closed_form_refine(stats, cfr_lambda=0.0)
    # 30 prompts x ~74 paired tokens in 32 dimensions: definite, so no ridge is needed.
    assert refinement.ridge == 0.0
    stats.target.total.zero_()
    stats.cross.zero_()
    singular = closed_form_refine(stats, cfr_lambda=0.0)
    assert singular.ridge > 0 and "ridge" in singular.log_lines()[-1]


def test_preservation_weight_is_per_token(setup):
    _, encoder, preservation, _ = setup
    prompts = default_preservation_prompts()[:40]
    from worker.erasure.statistics import prompt_second_moment

    doubled = prompt_second_moment(encoder, prompts + [p + " ." for p in prompts])
    stats = cfr_statistics(encoder, GROUPS)
    one = weighted_preservation(preservation, 1.0, stats.pair_count)
    two = weighted_preservation(doubled, 1.0, stats.pair_count)
    # Twice as many captions of the same distribution: the weighted term stays of the same size.
    assert 0.8 < float(two.trace() / one.trace()) < 1.25
