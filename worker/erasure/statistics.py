"""Second-moment statistics of text embeddings, accumulated in float64 in one streaming pass.

Memory stays O(width^2) per statistic whatever the number of concepts: embeddings are reduced
batch by batch and never kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .concepts import ConceptGroup
from .encoding import PromptEncoder
from .pairing import (
    PromptPair,
    TokenCounter,
    end_token_position,
    group_prompt_pairs,
    target_prompts,
)

Progress = Callable[[int, int], None]


@dataclass
class SecondMoment:
    """sum e e^T over `count` token embeddings (float64)."""

    total: torch.Tensor
    count: int = 0

    @classmethod
    def zeros(cls, width: int) -> SecondMoment:
        return cls(torch.zeros(width, width, dtype=torch.float64))

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(-1, rows.shape[-1]).double()
        self.total.addmm_(rows.T, rows)
        self.count += rows.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)


@dataclass
class CfrStatistics:
    """G_ff = sum e^f e^f^T and G_gf = sum e^g e^f^T over the paired positions of all groups,
    plus, when asked for, each group's Gram matrix over all tokens of its prompts (for fusion)."""

    target: SecondMoment
    cross: torch.Tensor
    group_grams: list[SecondMoment] = field(default_factory=list)

    @property
    def pair_count(self) -> int:
        return self.target.count


def _anchor_embeddings(
    encoder: PromptEncoder, pairs: Sequence[PromptPair]
) -> dict[str, torch.Tensor]:
    """Anchor prompts repeat across concepts (same templates, same anchor): encode each once."""
    unique = sorted({p.anchor_prompt for p in pairs})
    embeddings: dict[str, torch.Tensor] = {}
    for start, batch in encoder.batches(unique):
        for offset, row in enumerate(batch):
            embeddings[unique[start + offset]] = row.double()
    return embeddings


def cfr_statistics(
    encoder: PromptEncoder,
    groups: Sequence[ConceptGroup],
    *,
    keep_group_grams: bool = False,
    progress: Progress | None = None,
) -> CfrStatistics:
    """Stage-1 statistics for all groups (and per-group Grams if `keep_group_grams`).

    Args:
        encoder: the base model's prompt encoder.
        groups: the concept groups of the request.
        keep_group_grams: also return sum e e^T over all tokens of each group's target prompts.
        progress: called with (prompts encoded, prompts in all).
    """
    counter = TokenCounter(encoder.tokenizer)
    width = encoder.width
    pairs_by_group = [group_prompt_pairs(counter, g) for g in groups]
    anchors = _anchor_embeddings(encoder, [p for pairs in pairs_by_group for p in pairs])
    stats = CfrStatistics(SecondMoment.zeros(width), torch.zeros(width, width, dtype=torch.float64))
    total = sum(len(p) for p in pairs_by_group)
    done = 0
    for pairs in pairs_by_group:
        gram = SecondMoment.zeros(width) if keep_group_grams else None
        for start, batch in encoder.batches([p.target_prompt for p in pairs]):
            f_rows, g_rows = [], []
            for offset, embedding in enumerate(batch):
                pair = pairs[start + offset]
                f_rows.append(embedding[list(pair.target_positions)])
                g_rows.append(anchors[pair.anchor_prompt][list(pair.anchor_positions)])
            f = torch.cat(f_rows).double()
            stats.target.add(f)
            stats.cross.addmm_(torch.cat(g_rows).T, f)
            if gram is not None:
                gram.add(batch)
            done += len(batch)
            if progress:
                progress(done, total)
        if gram is not None:
            stats.group_grams.append(gram)
    return stats


def group_gram(encoder: PromptEncoder, group: ConceptGroup) -> SecondMoment:
    """G_i = sum e e^T over all tokens of the group's target prompts (stage 3's statistic)."""
    gram = SecondMoment.zeros(encoder.width)
    for _, batch in encoder.batches(target_prompts(group)):
        gram.add(batch)
    return gram


def prompt_second_moment(
    encoder: PromptEncoder, prompts: Sequence[str], tokens: str = "all"
) -> SecondMoment:
    """The preservation statistic P = sum e e^T over the prompts' token embeddings.

    tokens: "all" (the spec's P: every position, start and padding included) or "words" (each
    prompt's own tokens and its end token: a caption's content is not outweighed by ~60 padding
    positions that look alike in every caption).
    """
    moment = SecondMoment.zeros(encoder.width)
    prompts = list(prompts)
    counter = TokenCounter(encoder.tokenizer) if tokens == "words" else None
    for start, batch in encoder.batches(prompts):
        if counter is not None:
            chunk = prompts[start : start + len(batch)]
            ends = [end_token_position(counter, prompt) for prompt in chunk]
            batch = torch.cat([rows[1 : end + 1] for rows, end in zip(batch, ends, strict=True)])
        moment.add(batch)
    return moment
