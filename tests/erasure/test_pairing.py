"""Token pairing of f/g prompts and the tokenizer built from the shipped vocabulary."""

from __future__ import annotations

import pytest

from worker.erasure.concepts import ConceptGroup
from worker.erasure.errors import ErasureInputError
from worker.erasure.pairing import TokenCounter, group_prompt_pairs, pair_prompt, target_prompts
from worker.erasure.templates import TEMPLATES
from worker.erasure.tokenizer import load_clip_tokenizer


@pytest.fixture(scope="module")
def counter():
    return TokenCounter(load_clip_tokenizer())


def test_tokenizer_matches_stable_diffusion(counter):
    ids = counter.tokenizer("a photograph of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]


def test_phrase_tokens_are_left_out_and_the_rest_is_aligned(counter):
    pair = pair_prompt(counter, "a photo of {} at night", "van gogh", "a person")
    f_ids = counter.tokenizer(pair.target_prompt, padding="max_length", max_length=77).input_ids
    g_ids = counter.tokenizer(pair.anchor_prompt, padding="max_length", max_length=77).input_ids
    phrase = counter.ids("van gogh")
    assert f_ids[4 : 4 + len(phrase)] == list(phrase)
    # BOS + "a photo of" on both sides, then "at night", EOS and padding after each phrase.
    assert pair.target_positions[:4] == pair.anchor_positions[:4] == (0, 1, 2, 3)
    assert pair.target_positions[4] == 4 + len(phrase)
    assert pair.anchor_positions[4] == 4 + len(counter.ids("a person"))
    assert [f_ids[i] for i in pair.target_positions] == [g_ids[i] for i in pair.anchor_positions]
    assert max(pair.target_positions) == 76 or max(pair.anchor_positions) == 76
    assert not set(range(4, 4 + len(phrase))) & set(pair.target_positions)


def test_empty_anchor_pairs_the_suffix_directly(counter):
    pair = pair_prompt(counter, "a photo of the {}", "cat", "")
    assert pair.anchor_prompt == "a photo of the"
    assert pair.target_positions == (0, 1, 2, 3, 4) + tuple(range(6, 77))
    assert pair.anchor_positions == tuple(range(0, 76))


def test_every_template_and_synonym_is_used(counter):
    group = ConceptGroup(("nudity", "naked"), "explicit")
    prompts = target_prompts(group)
    assert len(prompts) == 2 * len(TEMPLATES["explicit"]) >= 60
    assert [p.target_prompt for p in group_prompt_pairs(counter, group)] == prompts
    assert all(len(TEMPLATES[kind]) >= 30 for kind in TEMPLATES)


def test_a_group_with_its_own_templates_uses_them_everywhere():
    group = ConceptGroup(("star",), "object", "", templates=("a red {}", "a {} on a grid"))
    assert target_prompts(group) == ["a red star", "a star on a grid"]
    assert group.image_templates == group.templates
    assert group.to_dict()["templates"] == ["a red {}", "a {} on a grid"]
    plain = ConceptGroup(("star",), "object", "")
    assert len(target_prompts(plain)) == 30 and "templates" not in plain.to_dict()
    with pytest.raises(ErasureInputError, match="exactly once"):
        ConceptGroup(("star",), templates=("a star",))
