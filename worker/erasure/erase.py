"""The three MACE stages end to end: CFR -> one LoRA per group -> closed-form fusion."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .base_model import ModelIdentity
from .cfr import closed_form_refine
from .concepts import ConceptGroup
from .edit import CompactEdit
from .encoding import PromptEncoder
from .errors import ErasureCancelled, ErasureInputError
from .fusion import FusedEdit, LoraFactors, fuse_loras, stack_unfused
from .pairing import TokenCounter, check_token_budget
from .preservation import default_preservation_prompts, preservation_statistics
from .statistics import SecondMoment, cfr_statistics, group_gram
from .versions import library_versions

# Per-group Gram matrices are kept from the CFR pass for fusion up to this many bytes;
# beyond it fusion encodes the prompts again instead of holding groups x d_in^2 numbers.
GRAM_CACHE_BYTES = 1 << 30

StageProgress = Callable[[str, float], None]


@dataclass
class ErasureResult:
    """The edit, each group's stage-2 LoRA, timings and the run's log."""

    edit: CompactEdit
    loras: dict[int, LoraFactors] = field(default_factory=dict)
    lora_losses: dict[int, list[float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


def validate_request(tokenizer, groups: Sequence[ConceptGroup], options) -> None:
    """Everything that can be checked before any work: raises `ErasureInputError`."""
    if not groups:
        raise ErasureInputError("give at least one concept group to erase")
    counter = TokenCounter(tokenizer)
    for group in groups:
        check_token_budget(counter, group)
    options.validate()


class _Run:
    """One erasure's state, so each stage is a short method."""

    def __init__(self, pipe, identity, groups, options, progress, should_cancel):
        self.pipe = pipe
        self.identity = identity
        self.groups = list(groups)
        self.options = options.resolve(self.groups)
        self.progress = progress or (lambda stage, fraction: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
        self.result_log: list[str] = []
        self.timings: dict[str, float] = {}

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise ErasureCancelled("the erasure was cancelled")

    def timed(self, stage: str, work: Callable):
        self.check_cancel()
        started = time.perf_counter()
        value = work()
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started
        self.progress(stage, 1.0)
        return value

    def preservation(self) -> SecondMoment | None:
        opts = self.options
        if not (opts.preservation_weight or opts.fusion_preservation_weight):
            return None
        prompts = opts.preservation_prompts or default_preservation_prompts()
        return preservation_statistics(
            self.encoder, self.identity, prompts, tokens=opts.preservation_tokens
        )

    def refine(self, preservation, keep_grams: bool):
        def report(done, total):
            self.progress("cfr", done / total)
            self.check_cancel()

        stats = cfr_statistics(
            self.encoder, self.groups, keep_group_grams=keep_grams, progress=report
        )
        refinement = closed_form_refine(
            stats,
            cfr_lambda=self.options.cfr_lambda,
            preservation=preservation,
            preservation_weight=self.options.preservation_weight,
        )
        return refinement, stats.group_grams

    def stage1(self, keep_grams: bool):
        """(P, CFR's refinement or None without the cfr stage, per-group Grams kept for fusion)."""
        preservation = self.timed("preservation", self.preservation)
        if "cfr" not in self.options.stages:
            return preservation, None, []
        refinement, grams = self.timed("cfr", lambda: self.refine(preservation, keep_grams))
        self.result_log += refinement.log_lines()
        return preservation, refinement, grams

    def grams(self, cached: list[SecondMoment]):
        if cached:
            yield from cached
            return
        for index, group in enumerate(self.groups):
            self.check_cancel()
            yield group_gram(self.encoder, group)
            self.progress("fusion", (index + 1) / (2 * len(self.groups)))


def erase(
    pipe,
    identity: ModelIdentity,
    groups: Sequence[ConceptGroup],
    options,
    *,
    progress: StageProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    trained_loras: dict[int, LoraFactors] | None = None,
    on_lora_trained: Callable[[int, object], None] | None = None,
    parent: CompactEdit | None = None,
) -> ErasureResult:
    """Erase `groups` from the pipeline's base weights; the pipeline is left as it was given.

    Args:
        pipe: a `StableDiffusionPipeline` holding the base model's weights.
        identity: the base model's identity, recorded in the edit.
        groups: the concept groups.
        options: `ErasureOptions`.
        progress: called with (stage, fraction of that stage done).
        should_cancel: polled between steps; when it returns True, `ErasureCancelled` is raised.
        trained_loras: LoRAs of groups already trained by an earlier attempt (group index ->
            factors); those groups are not trained again.
        on_lora_trained: called with (group index, ConceptLora) as soon as a group is trained,
            so a caller can store it before the next group starts.
        parent: an earlier erasure of the same base to erase more from; the result composes
            both and is still relative to the base weights.
    """
    validate_request(pipe.tokenizer, groups, options)
    run = _Run(pipe, identity, groups, options, progress, should_cancel)
    opts = run.options
    width = run.encoder.width
    use_fusion = "fusion" in opts.stages
    keep_grams = use_fusion and len(run.groups) * width * width * 8 <= GRAM_CACHE_BYTES
    preservation, refinement, cached_grams = run.stage1(keep_grams)
    transform = refinement.transform if refinement else torch.eye(width, dtype=torch.float64)

    loras: dict[int, LoraFactors] = dict(trained_loras or {})
    losses: dict[int, list[float]] = {}
    if "lora" in opts.stages:
        run.timed(
            "lora", lambda: _train_loras(run, transform, loras, losses, on_lora_trained, parent)
        )
    ordered = [loras[i] for i in range(len(run.groups))] if loras else []

    if use_fusion:
        fused = run.timed(
            "fusion",
            lambda: fuse_loras(
                transform,
                run.grams(cached_grams),
                ordered,
                fusion_lambda=opts.fusion_lambda,
                preservation=preservation,
                preservation_weight=opts.fusion_preservation_weight,
            ),
        )
        if fused.ridge:
            run.result_log.append(
                f"fusion: statistics were singular; added a ridge of {fused.ridge:.3g}"
            )
    elif ordered:
        fused = stack_unfused(transform, ordered)
    else:
        fused = FusedEdit(transform, {})
    metadata = {
        "base_model": identity.to_dict(),
        "concepts": [g.to_dict() for g in run.groups],
        "options": opts.to_dict(),
        "seed": opts.seed,
        "group_rank": opts.lora_rank if ordered else 0,
        "versions": library_versions(),
        "log": run.result_log,
        # The ridges the solves added (0 when well conditioned) and the condition numbers.
        "cfr_ridge": refinement.conditioning.to_dict() if "cfr" in opts.stages else None,
        "fusion_ridge": fused.conditioning.to_dict() if fused.conditioning else None,
    }
    edit = CompactEdit.from_fused(fused, metadata)
    if parent is not None:
        edit = parent.then(edit)
    return ErasureResult(edit, loras, losses, run.timings, run.result_log)


def train_stage2(
    pipe,
    identity: ModelIdentity,
    groups: Sequence[ConceptGroup],
    options,
    indices: Sequence[int],
    *,
    progress: StageProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_lora_trained: Callable[[int, object], None] | None = None,
    parent: CompactEdit | None = None,
) -> dict[int, LoraFactors]:
    """The LoRAs of `groups[i]` for i in `indices` only: one chunk of an erasure whose stage 2
    is shared out among workers. `erase` with all chunks' LoRAs as `trained_loras` then fuses.

    CFR runs first as in `erase` (deterministic, and cheap beside stage 2), so every chunk trains
    on the same refined weights, and each LoRA equals the one `erase` would train up to float
    rounding. Arguments are those of `erase`.
    """
    validate_request(pipe.tokenizer, groups, options)
    if not set(indices) <= set(range(len(groups))):
        raise ErasureInputError(f"group indices must lie in 0..{len(groups) - 1}")
    run = _Run(pipe, identity, groups, options, progress, should_cancel)
    if "lora" not in run.options.stages:
        raise ErasureInputError("this erasure has no lora stage to share out")
    _, refinement, _ = run.stage1(keep_grams=False)
    width = run.encoder.width
    transform = refinement.transform if refinement else torch.eye(width, dtype=torch.float64)
    loras: dict[int, LoraFactors] = {}
    run.timed(
        "lora",
        lambda: _train_loras(run, transform, loras, {}, on_lora_trained, parent, indices=indices),
    )
    return loras


def _train_loras(
    run: _Run, transform, loras, losses, on_lora_trained, parent, indices=None
) -> None:
    """Stage 2 for the groups (of `indices`, else all) not trained yet: images from the model
    erased from (the base, or the parent edit), LoRAs on top of its weights refined by T."""
    from .stage2 import train_group_loras

    refined = CompactEdit(transform.float(), {})
    if parent is not None:
        refined = parent.then(refined)
    wanted = range(len(run.groups)) if indices is None else sorted(set(indices))
    pending = [i for i in wanted if i not in loras]

    def trained(index: int, lora) -> None:
        loras[index] = lora.factors
        losses[index] = list(lora.losses)
        if on_lora_trained:
            on_lora_trained(index, lora)

    train_group_loras(
        run.pipe,
        run.groups,
        pending,
        run.options,
        refined=refined,
        source=parent,
        progress=lambda fraction: run.progress("lora", fraction),
        should_cancel=run.should_cancel,
        on_lora_trained=trained,
        timings=run.timings,
    )
