"""Token pairing of CFR prompts: f = T(concept), g = T(anchor), matched position by position.

BOS and the template's prefix are paired left-aligned; everything after the phrase (the suffix,
EOS and padding up to the tokenizer's length) is paired right after each phrase. The concept's
own tokens are left out, so CFR only moves what co-occurring words carry of the concept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .concepts import ConceptGroup
from .errors import ErasureInputError
from .templates import fill


@dataclass(frozen=True)
class PromptPair:
    """One CFR pair: the target prompt f, the anchor prompt g, and their matched positions."""

    target_prompt: str
    anchor_prompt: str
    target_positions: tuple[int, ...]
    anchor_positions: tuple[int, ...]


class TokenCounter:
    """Token ids of text pieces without BOS/EOS, memoised (templates repeat across concepts)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.max_length = tokenizer.model_max_length
        self._ids = lru_cache(maxsize=65536)(self._encode)

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids) if text else ()

    def ids(self, text: str) -> tuple[int, ...]:
        return self._ids(" ".join(text.split()))


def end_token_position(counter: TokenCounter, prompt: str) -> int:
    """Position (BOS = 0) of the end token in the padded prompt, truncation included."""
    return min(len(counter.ids(prompt)) + 1, counter.max_length - 1)


def phrase_span(counter: TokenCounter, template: str, phrase: str) -> tuple[int, int]:
    """(first position, token count) of `phrase` inside `fill(template, phrase)`, BOS counted."""
    prefix, suffix = template.split("{}")
    pre, mid, post = counter.ids(prefix), counter.ids(phrase), counter.ids(suffix)
    if counter.ids(fill(template, phrase)) != pre + mid + post:
        raise ErasureInputError(
            f"{phrase!r} does not tokenize on its own inside {template!r}; add spaces around it"
        )
    return 1 + len(pre), len(mid)


def pair_prompt(counter: TokenCounter, template: str, phrase: str, anchor: str) -> PromptPair:
    """Pair the positions of T(phrase) with T(anchor), leaving out the phrase's own tokens."""
    start, phrase_len = phrase_span(counter, template, phrase)
    _, anchor_len = phrase_span(counter, template, anchor)
    after_f, after_g = start + phrase_len, start + anchor_len
    tail = counter.max_length - max(after_f, after_g)
    shared_prefix = tuple(range(start))
    return PromptPair(
        target_prompt=fill(template, phrase),
        anchor_prompt=fill(template, anchor),
        target_positions=shared_prefix + tuple(range(after_f, after_f + tail)),
        anchor_positions=shared_prefix + tuple(range(after_g, after_g + tail)),
    )


def target_prompts(group: ConceptGroup) -> list[str]:
    """Every template filled with every target phrase of the group (stage 1, 2 and 3 prompts)."""
    return [fill(t, phrase) for phrase in group.targets for t in group.prompt_templates]


def group_prompt_pairs(counter: TokenCounter, group: ConceptGroup) -> list[PromptPair]:
    """All CFR pairs of a group, in the order of `target_prompts`."""
    return [
        pair_prompt(counter, t, phrase, group.resolved_anchor)
        for phrase in group.targets
        for t in group.prompt_templates
    ]


def check_token_budget(counter: TokenCounter, group: ConceptGroup) -> None:
    """Raise if a phrase or the anchor does not fit in every template within the token limit."""
    budget = counter.max_length - 2  # BOS and EOS
    for text in (*group.targets, group.resolved_anchor):
        for template in (*group.prompt_templates, *group.image_templates):
            prefix, suffix = template.split("{}")
            used = len(counter.ids(prefix)) + len(counter.ids(suffix)) + len(counter.ids(text))
            if used > budget:
                room = budget - used + len(counter.ids(text))
                raise ErasureInputError(
                    f"{text!r} is {len(counter.ids(text))} tokens; with the template {template!r} "
                    f"it must be at most {room} tokens: shorten it"
                )
            phrase_span(counter, template, text)
