"""Recording the cross-attention probabilities of a UNet while it runs.

Stage 2 needs the softmax probabilities (heads x pixels x tokens) of every cross-attention layer:
the attention masks are built from them during generation, and the LoRA loss is computed on them
during training. The fused kernels diffusers uses by default never materialise these
probabilities, so while capturing, each `attn2` runs an explicit processor that computes them with
`Attention.get_attention_scores` and hands them to a recorder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from .layers import cross_attention_layers


class AttentionRecorder(Protocol):
    """Anything that receives one layer's probabilities per UNet call."""

    def record(self, layer: str, probabilities: torch.Tensor) -> None:
        """Take `probabilities` of shape (batch, heads, pixels, tokens) from layer `layer`."""


class AttentionStore:
    """Keeps every recorded map, per layer, in call order (one entry per UNet forward pass).

    Memory grows with every call: use it for one training step at a time, or use a reducing
    recorder (see `masks.ConceptAttentionAccumulator`) across a whole generation.
    """

    def __init__(self) -> None:
        self.maps: dict[str, list[torch.Tensor]] = {}

    def record(self, layer: str, probabilities: torch.Tensor) -> None:
        self.maps.setdefault(layer, []).append(probabilities)

    def clear(self) -> None:
        self.maps.clear()

    def last(self) -> dict[str, torch.Tensor]:
        """The most recent map of every layer."""
        return {layer: calls[-1] for layer, calls in self.maps.items()}


class CrossAttentionCaptureProcessor:
    """Diffusers attention processor that computes attention explicitly and records it.

    The arithmetic follows diffusers' `AttnProcessor`, so the layer's output is the one the
    default processor gives (up to float rounding); LoRA layers on `to_k`/`to_v` take part
    because the projections are called as modules.
    """

    def __init__(self, layer: str, recorder: AttentionRecorder, *, keep_graph: bool) -> None:
        self.layer = layer
        self.recorder = recorder
        self.keep_graph = keep_graph

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, tokens, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))

        probabilities = attn.get_attention_scores(query, key, attention_mask)
        # head_to_batch_dim stacks batch-major, so this view separates batch and heads again.
        per_head = probabilities.view(batch, attn.heads, *probabilities.shape[1:])
        self.recorder.record(self.layer, per_head if self.keep_graph else per_head.detach())

        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def capture_cross_attention(
    unet: nn.Module, recorder: AttentionRecorder | None = None, *, keep_graph: bool = False
) -> Iterator[AttentionRecorder]:
    """Install the capturing processor on every `attn2` of `unet`; restore the originals on exit.

    Args:
        unet: a diffusers `UNet2DConditionModel` (LoRA adapters on its projections are fine).
        recorder: where the maps go; a new `AttentionStore` when omitted.
        keep_graph: keep the autograd graph on the recorded maps (training); otherwise they are
            detached (observing only).

    Yields:
        The recorder.
    """
    recorder = AttentionStore() if recorder is None else recorder
    layers = cross_attention_layers(unet)
    originals = {name: module.processor for name, module in layers.items()}
    try:
        for name, module in layers.items():
            module.set_processor(
                CrossAttentionCaptureProcessor(name, recorder, keep_graph=keep_graph)
            )
        yield recorder
    finally:
        for name, module in layers.items():
            module.set_processor(originals[name])


def pixel_grid(pixels: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) of a layer whose query has `pixels` positions.

    UNet levels halve the latent with stride-2 convolutions (rounding up), so the grid is
    `ceil(latent / 2**k)` for the one k whose area matches.

    Args:
        pixels: number of query positions of the layer.
        latent_size: (height, width) of the latent the UNet was run on.
    """
    height, width = latent_size
    for level in range(12):
        grid = (math.ceil(height / 2**level), math.ceil(width / 2**level))
        if grid[0] * grid[1] == pixels:
            return grid
        if grid == (1, 1):
            break
    raise ValueError(f"{pixels} query positions match no level of a {height}x{width} latent")
