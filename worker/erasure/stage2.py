"""Stage 2 over many groups: images and LoRAs of several groups per pass of the UNet.

A pass takes `concepts_per_pass` groups: their training images are drawn from the model being
erased from (the base, or a parent edit) in batched sampling calls, then their LoRAs are trained
together on the CFR-refined weights (`lora_training.train_concept_loras`). The weights switch
once per pass, not once per group. Every group comes out as it would alone (same seeds, same
draws), so how groups are split into passes changes speed and memory, not results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .concepts import ConceptGroup
from .edit import CompactEdit, EditedUnet
from .lora_training import ConceptLora, LoraJob, LoraOptions, train_concept_loras
from .timing import StageClock
from .training_data import generate_training_sets

# Without a GPU to measure, passes hold this many groups: enough to amortise per-call overhead.
CPU_CONCEPTS_PER_PASS = 32
MAX_CONCEPTS_PER_PASS = 32
# Images per sampling call when not set: a GPU's throughput stops growing well before this.
MAX_IMAGES_PER_CALL = {"cuda": 64, "cpu": 32}
# Share of the free GPU memory the training batch may fill.
MEMORY_SHARE = 0.6

Progress = Callable[[float], None]


def train_group_loras(
    pipe,
    groups: Sequence[ConceptGroup],
    indices: Sequence[int],
    options,
    *,
    refined: CompactEdit,
    source: CompactEdit | None = None,
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_lora_trained: Callable[[int, ConceptLora], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[int, ConceptLora]:
    """Train the LoRAs of `groups[i]` for i in `indices`, pass by pass.

    Args:
        pipe: the base model's pipeline; its UNet's weights are restored to what they were.
        groups: all groups of the request (a group's index is part of its seeds).
        indices: which groups to train.
        options: resolved `ErasureOptions`.
        refined: the edit the LoRAs are trained on top of (the CFR transform, after `source`).
        source: the edit the training images are drawn from; the base model when None.
        progress: called with the fraction of this work done.
        should_cancel: polled between steps; a true result raises `ErasureCancelled`.
        on_lora_trained: called with (group index, ConceptLora) as soon as a pass ends, so a
            caller can store each LoRA before the next pass starts.
        timings: if given, seconds are added under "lora_images", "lora_setup", "lora_steps".
    """
    report = progress or (lambda fraction: None)
    edited = EditedUnet.of(pipe.unet)
    given = edited.applied
    steps = {i: options.lora_steps_for(groups[i]) for i in indices}
    per_pass = concepts_per_pass(options.concepts_per_pass, pipe, len(indices), options)
    trained: dict[int, ConceptLora] = {}
    work_done, work_total = 0.0, float(sum(options.images_per_concept + steps[i] for i in indices))

    def advance(amount: float) -> None:
        report(min((work_done + amount) / work_total, 1.0))

    try:
        for chunk in split_into_passes(list(indices), per_pass):
            clock = StageClock(pipe.unet.device, timings)
            _set_weights(edited, source)
            images = options.images_per_concept * len(chunk)
            training_sets = generate_training_sets(
                pipe,
                [(i, groups[i]) for i in chunk],
                seed=options.seed,
                count=options.images_per_concept,
                mask_provider=options.mask_provider,
                num_inference_steps=options.image_steps,
                guidance_scale=options.guidance_scale,
                batch_size=image_batch_size(options.image_batch_size, pipe, images),
                progress=lambda done, total: advance(done),
                should_cancel=should_cancel,
            )
            work_done += images
            clock.lap("lora_images")
            edited.apply(refined)
            jobs = [
                LoraJob(groups[i], i, training_set, _lora_options(options, groups[i]))
                for i, training_set in zip(chunk, training_sets, strict=True)
            ]
            pass_steps = sum(steps[i] for i in chunk)
            loras = train_concept_loras(
                pipe,
                jobs,
                seed=options.seed,
                precision=options.training_precision,
                progress=lambda done, total, share=pass_steps: advance(share * done / total),
                should_cancel=should_cancel,
                timings=timings,
            )
            work_done += pass_steps
            for index, lora in zip(chunk, loras, strict=True):
                trained[index] = lora
                if on_lora_trained is not None:
                    on_lora_trained(index, lora)
    finally:
        _set_weights(edited, given)
    return trained


def split_into_passes(indices: list[int], per_pass: int) -> list[list[int]]:
    """`indices` in request order, in the fewest passes of at most `per_pass`, their sizes
    differing by one at most."""
    if not indices:
        return []
    passes = math.ceil(len(indices) / per_pass)
    size, larger = divmod(len(indices), passes)
    chunks, start = [], 0
    for number in range(passes):
        end = start + size + (number < larger)
        chunks.append(indices[start:end])
        start = end
    return chunks


def concepts_per_pass(requested: int | None, pipe, pending: int, options) -> int:
    """How many groups share a pass: `requested`, else as many as free GPU memory holds."""
    pending = max(pending, 1)
    if requested:
        return min(requested, pending)
    device = pipe.unet.device
    if device.type != "cuda":
        return min(CPU_CONCEPTS_PER_PASS, pending)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    per_concept = _training_sample_bytes(pipe, options) * options.lora_batch_size
    fitting = int(MEMORY_SHARE * free // max(per_concept, 1))
    return max(1, min(fitting, MAX_CONCEPTS_PER_PASS, pending))


def image_batch_size(requested: int | None, pipe, images: int) -> int:
    """Images per sampling call: `requested`, else all of a pass's images up to a cap."""
    if requested:
        return requested
    return max(1, min(images, MAX_IMAGES_PER_CALL.get(pipe.unet.device.type, 32)))


def _training_sample_bytes(pipe, options) -> int:
    """Peak GPU memory of one training sample: one forward and backward at batch 1, measured."""
    from .attention_capture import capture_cross_attention
    from .lora_training import per_sample_suppression_loss
    from .precision import autocast, autocast_dtype
    from .routed_lora import RoutedLoraBank, routed_lora

    unet, device = pipe.unet, pipe.unet.device
    side = unet.config.sample_size
    latent = torch.zeros(1, unet.config.in_channels, side, side, device=device, dtype=unet.dtype)
    text = torch.zeros(
        1, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size, device=device
    ).to(unet.dtype)
    bank = RoutedLoraBank(unet, 1, options.lora_rank)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    weights = torch.ones(1, text.shape[1], device=device)
    compute_dtype = autocast_dtype(options.training_precision, device)
    with routed_lora(unet, bank), torch.enable_grad():
        bank.route = torch.zeros(1, dtype=torch.long, device=device)
        with (
            autocast(device, compute_dtype),
            capture_cross_attention(unet, keep_graph=True) as store,
        ):
            unet(latent, torch.tensor([500], device=device), encoder_hidden_states=text)
            loss = per_sample_suppression_loss(
                store.last(), lambda pixels: torch.ones(1, pixels, device=device), weights
            )
        loss.sum().backward()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _lora_options(options, group: ConceptGroup) -> LoraOptions:
    return LoraOptions(
        rank=options.lora_rank,
        learning_rate=options.lora_learning_rate_for(group),
        steps=options.lora_steps_for(group),
        cfis=options.cfis_for(group),
        batch_size=options.lora_batch_size,
        suppress_end_tokens=options.lora_suppress_end_tokens,
    )


def _set_weights(edited: EditedUnet, edit: CompactEdit | None) -> None:
    if edit is None:
        edited.restore()
    else:
        edited.apply(edit)
