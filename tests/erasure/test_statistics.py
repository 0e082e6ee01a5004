"""Streaming statistics against a straightforward row-by-row computation from raw embeddings."""

from __future__ import annotations

import pytest
import torch

from worker.erasure.base_model import load_pipeline
from worker.erasure.concepts import ConceptGroup
from worker.erasure.encoding import PromptEncoder, default_batch_size, has_float64
from worker.erasure.pairing import TokenCounter, end_token_position, group_prompt_pairs
from worker.erasure.statistics import cfr_statistics, group_gram, prompt_second_moment

# Anchors of different lengths than their phrases (pairing shifts the tail), two anchors.
GROUPS = [
    ConceptGroup(("cat", "striped kitten")),
    ConceptGroup(("van gogh",), "style"),
    ConceptGroup(("a red umbrella",), "object", "a large grey building"),
]
CAPTIONS = ["a dog on a sofa", "two boats at sea under a cloudy sky", "a bowl of soup", "tree"]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir))
    # An odd batch size: batches straddle the groups' phrases and templates.
    return PromptEncoder(pipe.tokenizer, pipe.text_encoder, batch_size=7)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def reference_statistics(encoder, groups):
    """G_ff, G_gf and per-group Grams summed one pair and one row at a time, in float64."""
    counter = TokenCounter(encoder.tokenizer)
    width = encoder.width
    g_ff = torch.zeros(width, width, dtype=torch.float64)
    g_gf = torch.zeros(width, width, dtype=torch.float64)
    grams, count = [], 0
    for group in groups:
        gram = torch.zeros(width, width, dtype=torch.float64)
        for pair in group_prompt_pairs(counter, group):
            f, g = encoder.encode([pair.target_prompt, pair.anchor_prompt]).double()
            for i, j in zip(pair.target_positions, pair.anchor_positions, strict=True):
                g_ff += torch.outer(f[i], f[i])
                g_gf += torch.outer(g[j], f[i])
                count += 1
            gram += f.T @ f
        grams.append(gram)
    return g_ff, g_gf, grams, count


def test_cfr_statistics_equal_a_row_by_row_reference(encoder):
    stats = cfr_statistics(encoder, GROUPS, keep_group_grams=True)
    g_ff, g_gf, grams, count = reference_statistics(encoder, GROUPS)
    assert stats.pair_count == count
    assert stats.target.total.device.type == "cpu" and stats.target.total.dtype == torch.float64
    assert relative(stats.target.total, g_ff) < 1e-10
    assert relative(stats.cross, g_gf) < 1e-10
    for kept, expected, group in zip(stats.group_grams, grams, GROUPS, strict=True):
        assert relative(kept.total, expected) < 1e-10
        assert relative(group_gram(encoder, group).total, expected) < 1e-10


@pytest.mark.parametrize("tokens", ["all", "words"])
def test_prompt_second_moment_equals_a_per_prompt_reference(encoder, tokens):
    counter = TokenCounter(encoder.tokenizer)
    expected = torch.zeros(encoder.width, encoder.width, dtype=torch.float64)
    count = 0
    for caption in CAPTIONS:
        rows = encoder.encode([caption])[0].double()
        if tokens == "words":
            rows = rows[1 : end_token_position(counter, caption) + 1]
        expected += rows.T @ rows
        count += rows.shape[0]
    moment = prompt_second_moment(encoder, CAPTIONS, tokens)
    assert moment.count == count and moment.total.device.type == "cpu"
    assert relative(moment.total, expected) < 1e-10


def test_statistics_stay_on_the_encoders_device_when_it_has_float64(encoder):
    assert has_float64(torch.device("cpu"))
    assert encoder.statistics_device == torch.device("cpu")
    assert default_batch_size(torch.device("cuda")) > default_batch_size(torch.device("cpu"))
