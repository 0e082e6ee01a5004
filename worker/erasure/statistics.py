"""Second-moment statistics of text embeddings, accumulated in float64 in one streaming pass.

Memory stays O(width^2) per statistic whatever the number of concepts: embeddings are reduced
batch by batch and never kept. The sums run on the text encoder's device when it has float64
(the embeddings never leave a GPU), the paired rows are gathered with one index per batch, and
the finished d x d matrices are returned on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain

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
    def zeros(cls, width: int, device: torch.device | str = "cpu") -> SecondMoment:
        return cls(torch.zeros(width, width, dtype=torch.float64, device=device))

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(-1, rows.shape[-1]).to(self.total.device).double()
        self.total.addmm_(rows.T, rows)
        self.count += rows.shape[0]

    def cpu(self) -> SecondMoment:
        return SecondMoment(self.total.cpu(), self.count)

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


class _AnchorRows:
    """Every distinct anchor prompt encoded once (they repeat across concepts: same templates,
    same anchor), kept as one (prompts x length, width) float32 table on the statistics device."""

    def __init__(self, encoder: PromptEncoder, pairs: Sequence[PromptPair], device):
        prompts = sorted({p.anchor_prompt for p in pairs})
        self.index = {prompt: i for i, prompt in enumerate(prompts)}
        self.length = encoder.max_length
        batches = [batch for _, batch in encoder.batches(prompts, device)]
        self.table = torch.cat(batches).reshape(-1, encoder.width)

    def rows(self, pairs: Sequence[PromptPair]) -> torch.Tensor:
        """e^g of the pairs, in the order of `paired_row_index`."""
        prompts = [self.index[p.anchor_prompt] for p in pairs]
        flat = paired_row_index(prompts, [p.anchor_positions for p in pairs], self.length)
        return self.table.index_select(0, flat.to(self.table.device))


def paired_row_index(
    prompts: Sequence[int], positions: Sequence[Sequence[int]], length: int
) -> torch.Tensor:
    """Row numbers into a (prompts x length, width) table of position `positions[i][j]` of
    prompt `prompts[i]`, for every i and j in order.

    Args:
        prompts: each pair's prompt number in the table.
        positions: each pair's token positions.
        length: positions per prompt (the tokenizer's max length).
    """
    counts = torch.tensor([len(p) for p in positions], dtype=torch.long)
    within = torch.tensor(list(chain.from_iterable(positions)), dtype=torch.long)
    starts = torch.tensor(prompts, dtype=torch.long) * length
    return torch.repeat_interleave(starts, counts) + within


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
    width, device = encoder.width, encoder.statistics_device
    pairs_by_group = [group_prompt_pairs(counter, g) for g in groups]
    anchors = _AnchorRows(encoder, [p for pairs in pairs_by_group for p in pairs], device)
    target = SecondMoment.zeros(width, device)
    cross = torch.zeros(width, width, dtype=torch.float64, device=device)
    grams: list[SecondMoment] = []
    total = sum(len(p) for p in pairs_by_group)
    done = 0
    for pairs in pairs_by_group:
        gram = SecondMoment.zeros(width, device) if keep_group_grams else None
        for start, batch in encoder.batches([p.target_prompt for p in pairs], device):
            chunk = pairs[start : start + len(batch)]
            flat = paired_row_index(
                range(len(chunk)), [p.target_positions for p in chunk], encoder.max_length
            )
            f = batch.reshape(-1, width).index_select(0, flat.to(device)).double()
            target.add(f)
            cross.addmm_(anchors.rows(chunk).double().T, f)
            if gram is not None:
                gram.add(batch)
            done += len(batch)
            if progress:
                progress(done, total)
        if gram is not None:
            grams.append(gram.cpu())  # one group's Gram at a time on the device
    return CfrStatistics(target.cpu(), cross.cpu(), grams)


def group_gram(encoder: PromptEncoder, group: ConceptGroup) -> SecondMoment:
    """G_i = sum e e^T over all tokens of the group's target prompts (stage 3's statistic)."""
    device = encoder.statistics_device
    gram = SecondMoment.zeros(encoder.width, device)
    for _, batch in encoder.batches(target_prompts(group), device):
        gram.add(batch)
    return gram.cpu()


def prompt_second_moment(
    encoder: PromptEncoder, prompts: Sequence[str], tokens: str = "all"
) -> SecondMoment:
    """The preservation statistic P = sum e e^T over the prompts' token embeddings.

    tokens: "all" (the spec's P: every position, start and padding included) or "words" (each
    prompt's own tokens and its end token: a caption's content is not outweighed by ~60 padding
    positions that look alike in every caption).
    """
    device = encoder.statistics_device
    moment = SecondMoment.zeros(encoder.width, device)
    prompts = list(prompts)
    counter = TokenCounter(encoder.tokenizer) if tokens == "words" else None
    for start, batch in encoder.batches(prompts, device):
        if counter is not None:
            chunk = prompts[start : start + len(batch)]
            ends = torch.tensor([end_token_position(counter, prompt) for prompt in chunk])
            batch = batch[_word_positions(ends, batch.shape[1]).to(device)]
        moment.add(batch)
    return moment.cpu()


def _word_positions(ends: torch.Tensor, length: int) -> torch.Tensor:
    """(prompts, length) mask of positions 1 .. end of each prompt: its words and end token."""
    positions = torch.arange(length)
    return (positions >= 1) & (positions <= ends[:, None])
