"""The preservation statistic P: which positions it counts, and its cache."""

from __future__ import annotations

import pytest
import torch

from worker.erasure.base_model import load_pipeline, model_identity
from worker.erasure.concepts import ConceptGroup
from worker.erasure.encoding import PromptEncoder
from worker.erasure.erase import erase
from worker.erasure.errors import ErasureInputError
from worker.erasure.options import ErasureOptions
from worker.erasure.preservation import preservation_statistics
from worker.erasure.statistics import prompt_second_moment

PROMPTS = ["a photo of a dog", "a quiet street at night, oil painting", "two red apples"]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir))
    return pipe, PromptEncoder(pipe.tokenizer, pipe.text_encoder), model_identity(tiny_model_dir)


def explicit_word_rows(encoder, prompts) -> torch.Tensor:
    """Each prompt's rows from after the start token up to its first end token, inclusive."""
    ids = encoder.tokenizer(
        prompts, padding="max_length", max_length=encoder.max_length, truncation=True
    ).input_ids
    embeddings = encoder.encode(prompts).double()
    rows = []
    for prompt_ids, embedding in zip(ids, embeddings, strict=True):
        end = prompt_ids.index(encoder.tokenizer.eos_token_id)
        rows.append(embedding[1 : end + 1])
    return torch.cat(rows)


def test_words_count_each_prompts_own_tokens_and_its_end_token(base):
    _, encoder, _ = base
    words = prompt_second_moment(encoder, PROMPTS, "words")
    rows = explicit_word_rows(encoder, PROMPTS)
    own = sum(len(encoder.tokenizer(p, add_special_tokens=False).input_ids) for p in PROMPTS)
    assert words.count == rows.shape[0] == own + len(PROMPTS)
    torch.testing.assert_close(words.total, rows.T @ rows)
    every = prompt_second_moment(encoder, PROMPTS)
    assert every.count == len(PROMPTS) * encoder.max_length
    assert not torch.allclose(words.mean, every.mean, rtol=0.05)


def test_words_of_a_truncated_prompt_stop_at_its_end_token(base):
    _, encoder, _ = base
    long_prompt = " ".join(["a red apple"] * 40)
    words = prompt_second_moment(encoder, [long_prompt], "words")
    rows = explicit_word_rows(encoder, [long_prompt])
    assert words.count == rows.shape[0] == encoder.max_length - 1
    torch.testing.assert_close(words.total, rows.T @ rows)


def test_each_choice_has_its_own_cache_entry(base, tmp_path):
    _, encoder, identity = base
    every = preservation_statistics(encoder, identity, PROMPTS, cache=tmp_path)
    words = preservation_statistics(encoder, identity, PROMPTS, tokens="words", cache=tmp_path)
    names = {p.name for p in (tmp_path / "preservation").iterdir()}
    # "all" keeps the key it had before the choice existed; "words" adds a suffix.
    plain = next(n for n in names if not n.endswith("-words.safetensors"))
    assert names == {plain, plain.replace(".safetensors", "-words.safetensors")}
    cached = preservation_statistics(encoder, identity, PROMPTS, tokens="words", cache=tmp_path)
    assert cached.count == words.count != every.count
    torch.testing.assert_close(cached.total, words.total)
    with pytest.raises(ErasureInputError, match="preservation_tokens must be one of all, words"):
        preservation_statistics(encoder, identity, PROMPTS, tokens="content", cache=tmp_path)


def test_the_choice_reaches_the_refinement(base):
    pipe, _, identity = base
    groups = [ConceptGroup(("cat",))]
    options = dict(stages=("cfr",), preservation_weight=1.0, preservation_prompts=tuple(PROMPTS))
    every = erase(pipe, identity, groups, ErasureOptions(**options))
    words = erase(pipe, identity, groups, ErasureOptions(**options, preservation_tokens="words"))
    assert words.edit.metadata["options"]["preservation_tokens"] == "words"
    assert every.edit.metadata["options"]["preservation_tokens"] == "all"
    # Same prompts, same weight: only the positions P counts differ, and so does CFR's M.
    assert not torch.allclose(words.edit.transform, every.edit.transform, rtol=1e-3, atol=1e-5)


def test_unknown_choice_is_an_input_error():
    with pytest.raises(ErasureInputError, match="preservation_tokens must be one of all, words"):
        ErasureOptions(preservation_tokens="padding").validate()
