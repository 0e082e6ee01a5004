"""Stage 1: the CFR solution against its normal equations and its objective, from raw embeddings."""

from __future__ import annotations

import pytest
import torch

from worker.erasure.base_model import load_pipeline, model_identity
from worker.erasure.cfr import closed_form_refine, refine_weight, weighted_preservation
from worker.erasure.concepts import ConceptGroup
from worker.erasure.encoding import PromptEncoder
from worker.erasure.erase import erase
from worker.erasure.fusion import fuse_loras
from worker.erasure.layers import cross_attention_projections
from worker.erasure.linalg import MAX_CONDITION
from worker.erasure.options import ErasureOptions
from worker.erasure.pairing import TokenCounter, group_prompt_pairs, target_prompts
from worker.erasure.preservation import default_preservation_prompts, preservation_statistics
from worker.erasure.statistics import cfr_statistics, group_gram

GROUPS = [ConceptGroup(("cat", "kitten")), ConceptGroup(("van gogh",), "style")]
# The style default (lam 0, preservation weight 1): singular on the tiny model (see below).
STYLE = ConceptGroup(("Van Gogh",), "style")


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


def test_ridge_is_added_only_to_a_singular_or_ill_conditioned_system(setup):
    _, encoder, _, _ = setup
    stats = cfr_statistics(encoder, [ConceptGroup(("cat",))])
    # lam = 1 bounds the condition number by about trace / 1: well conditioned, no ridge.
    assert closed_form_refine(stats, cfr_lambda=1.0).ridge == 0.0
    # lam = 0: the tiny model's final LayerNorm (no bias) leaves every embedding orthogonal to the
    # all-ones vector, so G_ff is singular.
    singular = closed_form_refine(stats, cfr_lambda=0.0)
    assert singular.ridge > 0 and singular.conditioning.singular
    assert singular.conditioning.condition_before > 1e12
    assert singular.conditioning.condition_after <= MAX_CONDITION
    line = singular.log_lines()[-1]
    assert "ridge" in line and "singular" in line and "condition number now" in line
    stats.target.total.zero_()
    stats.cross.zero_()
    assert closed_form_refine(stats, cfr_lambda=0.0).ridge > 0


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


# ---- a singular system: the style default on the tiny model ---------------------------------


@pytest.fixture(scope="module")
def style_erasure(setup, tiny_model_dir):
    """`erase` with CFR only, at the style's defaults, and its float64 system A, N (T = N A^-1)."""
    pipe, encoder, _, _ = setup
    identity = model_identity(str(tiny_model_dir))
    result = erase(pipe, identity, [STYLE], ErasureOptions(stages=("cfr",)))
    stats = cfr_statistics(encoder, [STYLE])
    preservation = preservation_statistics(encoder, identity, default_preservation_prompts())
    refinement = closed_form_refine(
        stats, cfr_lambda=0.0, preservation=preservation, preservation_weight=1.0
    )
    preserved = weighted_preservation(preservation, 1.0, stats.pair_count)
    system = (stats.target.total + preserved, stats.cross + preserved)
    return result.edit, refinement, system


def style_embeddings(encoder):
    """Every token row of the style's target and anchor prompts, in float64."""
    anchors = {p.anchor_prompt for p in group_prompt_pairs(TokenCounter(encoder.tokenizer), STYLE)}
    prompts = target_prompts(STYLE) + sorted(anchors)
    return encoder.encode(prompts).double().reshape(-1, encoder.width)


def keys_error(keys: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest relative error of one token's key."""
    return float(((keys.double() - reference).norm(dim=1) / reference.norm(dim=1)).max())


def test_singular_cfr_records_its_ridge_and_keeps_the_shared_matrix_bounded(style_erasure):
    edit, refinement, _ = style_erasure
    record = edit.metadata["cfr_ridge"]
    assert record["reason"] == "singular"
    assert record["ridge"] == pytest.approx(refinement.ridge) and record["ridge"] > 0
    assert record["condition_after"] <= MAX_CONDITION
    assert any("added a ridge" in line for line in edit.metadata["log"])
    # Without the ridge |M| was ~3e4; bounded, it stays near the identity's sqrt(d) = 5.7.
    assert float(edit.transform.norm()) < 20
    assert torch.allclose(edit.transform.double(), refinement.transform, atol=1e-6)


def test_singular_cfr_edit_on_an_fp16_base_gives_keys_within_fp16_rounding(setup, style_erasure):
    pipe, encoder, _, _ = setup
    edit, refinement, _ = style_erasure
    name, linear = next(iter(cross_attention_projections(pipe.unet).items()))
    base = linear.weight.detach()
    rows = style_embeddings(encoder)
    exact = rows @ (base.double() @ refinement.transform).T
    fp16_keys = rows.half() @ edit.edited_weight(name, base.half()).T
    # fp16's unit roundoff is 4.9e-4 (the base weight alone in fp16 is off by ~5e-4); without
    # the ridge these keys were off by ~400%.
    assert keys_error(fp16_keys, exact) < 2e-3


def test_fusion_without_lambda_gets_the_same_ridge(setup, style_erasure, tiny_model_dir):
    _, encoder, _, weights = setup
    _, refinement, _ = style_erasure
    generator = torch.Generator().manual_seed(0)
    lora = {
        name: (
            1e-2 * torch.randn(base.shape[0], 1, generator=generator, dtype=torch.float64),
            torch.randn(1, base.shape[1], generator=generator, dtype=torch.float64),
        )
        for name, base in weights.items()
    }
    grams = [group_gram(encoder, STYLE)]
    preservation = preservation_statistics(
        encoder, model_identity(str(tiny_model_dir)), default_preservation_prompts()
    )

    def fuse(fusion_lambda):
        return fuse_loras(
            refinement.transform,
            grams,
            [lora],
            fusion_lambda=fusion_lambda,
            preservation=preservation,
            preservation_weight=1.0,
        )

    # fusion_lambda 0.1 (the default) keeps B well conditioned; 0 leaves it as singular as G_ff.
    assert fuse(0.1).ridge == 0.0
    fused = fuse(0.0)
    assert fused.conditioning.singular and fused.ridge > 0
    assert float(fused.transform.norm()) < 20  # ~8e3 without the ridge


def test_the_ridge_leaves_the_keys_of_actual_embeddings_in_place(setup, style_erasure):
    _, encoder, _, weights = setup
    _, refinement, (spd, numerator) = style_erasure
    unregularised = torch.linalg.solve(spd, numerator.T).T
    # The exact solution where the statistics carry information, the identity elsewhere.
    values, vectors = torch.linalg.eigh(spd)
    seen = values > values[-1] * 1e-12
    kept, null = vectors[:, seen], vectors[:, ~seen]
    pseudo_inverse = numerator @ kept @ torch.diag(1 / values[seen]) @ kept.T + null @ null.T
    rows = style_embeddings(encoder)
    base = next(iter(weights.values()))
    keys = rows @ (base @ refinement.transform).T
    assert keys_error(keys, rows @ (base @ pseudo_inverse).T) < 1e-4
    # The unregularised solve amplifies the embeddings' rounding along the null direction
    # (~2e-3 here), so it agrees only to that.
    assert keys_error(keys, rows @ (base @ unregularised).T) < 1e-2
