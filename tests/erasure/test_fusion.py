"""Stage 3: closed-form fusion against its normal equations and its objective."""

from __future__ import annotations

import pytest
import torch

from worker.erasure.base_model import load_pipeline, model_identity
from worker.erasure.cfr import closed_form_refine, weighted_preservation
from worker.erasure.concepts import ConceptGroup
from worker.erasure.edit import CompactEdit
from worker.erasure.encoding import PromptEncoder
from worker.erasure.fusion import fuse_loras, stack_unfused
from worker.erasure.layers import cross_attention_projections
from worker.erasure.pairing import target_prompts
from worker.erasure.preservation import default_preservation_prompts, preservation_statistics
from worker.erasure.statistics import cfr_statistics, group_gram

GROUPS = [ConceptGroup(("cat",)), ConceptGroup(("dog", "puppy")), ConceptGroup(("monet",), "style")]


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir))
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    identity = model_identity(str(tiny_model_dir))
    preservation = preservation_statistics(encoder, identity, default_preservation_prompts()[:40])
    weights = {
        n: m.weight.detach().double() for n, m in cross_attention_projections(pipe.unet).items()
    }
    transform = closed_form_refine(cfr_statistics(encoder, GROUPS), cfr_lambda=10.0).transform
    generator = torch.Generator().manual_seed(1)
    loras = [
        {
            name: (
                0.1 * torch.randn(w.shape[0], 1, generator=generator),
                torch.randn(1, w.shape[1], generator=generator),
            )
            for name, w in weights.items()
        }
        for _ in GROUPS
    ]
    return encoder, preservation, weights, transform, loras


def fusion_objective(weight, refined, deltas, group_rows, lam, base, pres_rows):
    value = lam * ((weight - refined) ** 2).sum() + ((pres_rows @ (weight - base).T) ** 2).sum()
    for delta, rows in zip(deltas, group_rows, strict=True):
        value += ((rows @ (weight - refined - delta).T) ** 2).sum()
    return value


def test_fusion_satisfies_normal_equations_and_beats_alternatives(setup):
    encoder, preservation, weights, transform, loras = setup
    lam_f, s_f = 0.5, 0.3
    grams = [group_gram(encoder, g) for g in GROUPS]
    fused = fuse_loras(
        transform,
        grams,
        loras,
        fusion_lambda=lam_f,
        preservation=preservation,
        preservation_weight=s_f,
    )
    group_rows = [
        encoder.encode(target_prompts(g)).double().reshape(-1, encoder.width) for g in GROUPS
    ]
    assert all(torch.allclose(r.T @ r, g.total) for r, g in zip(group_rows, grams, strict=True))
    token_count = sum(g.count for g in grams)
    pres = weighted_preservation(preservation, s_f, token_count)
    evals, evecs = torch.linalg.eigh(pres)
    pres_rows = (evecs * evals.clamp_min(0).sqrt()).T
    eye = torch.eye(encoder.width, dtype=torch.float64)
    gram_sum = sum(g.total for g in grams)
    generator = torch.Generator().manual_seed(2)
    for name, base in weights.items():
        refined = base @ transform
        up, down = fused.factors[name]
        fused_weight = base @ fused.transform + up @ down
        deltas = [lora[name][0].double() @ lora[name][1].double() for lora in loras]
        lhs = fused_weight @ (gram_sum + lam_f * eye + pres)
        rhs = (
            refined @ (gram_sum + lam_f * eye)
            + sum(d @ g.total for d, g in zip(deltas, grams, strict=True))
            + base @ pres
        )
        assert (lhs - rhs).norm() / rhs.norm() < 1e-6, name
        args = (refined, deltas, group_rows, lam_f, base, pres_rows)
        best = fusion_objective(fused_weight, *args)
        assert best < fusion_objective(refined, *args)
        assert best < fusion_objective(refined + deltas[0], *args)
        for _ in range(5):
            nudge = 1e-3 * torch.randn(base.shape, generator=generator, dtype=torch.float64)
            assert best < fusion_objective(fused_weight + nudge, *args)


def test_one_lora_with_a_tiny_lambda_is_kept_on_its_prompts(setup):
    encoder, _, weights, transform, loras = setup
    fused = fuse_loras(transform, [group_gram(encoder, GROUPS[0])], loras[:1], fusion_lambda=1e-9)
    # Compared on the group's own embeddings: a random text encoder's LayerNorm output has no
    # component along the all-ones direction, so W* is only determined on the embeddings' span.
    rows = encoder.encode(target_prompts(GROUPS[0])).double().reshape(-1, encoder.width)
    for name, base in weights.items():
        up, down = fused.factors[name]
        expected = base @ transform + loras[0][name][0].double() @ loras[0][name][1].double()
        got = base @ fused.transform + up @ down
        assert torch.allclose(rows @ got.T, rows @ expected.T, atol=1e-6), name


def test_grams_kept_from_the_cfr_pass_equal_recomputed_ones(setup):
    encoder = setup[0]
    stats = cfr_statistics(encoder, GROUPS, keep_group_grams=True)
    for kept, group in zip(stats.group_grams, GROUPS, strict=True):
        fresh = group_gram(encoder, group)
        assert kept.count == fresh.count
        assert torch.allclose(kept.total, fresh.total, rtol=1e-10)


def test_compact_form_stores_rank_per_group_and_round_trips(setup, tmp_path):
    encoder, _, weights, transform, loras = setup
    grams = [group_gram(encoder, g) for g in GROUPS]
    edit = CompactEdit.from_fused(
        fuse_loras(transform, grams, loras, fusion_lambda=0.1), {"seed": 3}
    )
    name = next(iter(weights))
    assert edit.factors[name][0].shape == (weights[name].shape[0], len(GROUPS))
    edit.save(tmp_path)
    loaded = CompactEdit.load(tmp_path)
    assert loaded.metadata == {"seed": 3}
    assert torch.equal(loaded.transform, edit.transform)
    for key, (up, down) in edit.factors.items():
        assert torch.equal(loaded.factors[key][0], up) and torch.equal(loaded.factors[key][1], down)


def test_unfused_stack_is_the_plain_sum_of_loras(setup):
    _, _, weights, transform, loras = setup
    stacked = stack_unfused(transform, loras)
    for name, base in weights.items():
        up, down = stacked.factors[name]
        expected = base @ transform + sum(
            lo[name][0].double() @ lo[name][1].double() for lo in loras
        )
        assert torch.allclose(base @ stacked.transform + up @ down, expected, atol=1e-10)
