"""Several concepts' LoRAs on one UNet at once, each batch entry routed to its own concept's.

Stage 2 trains a rank-r LoRA per concept on every cross-attention `to_k`/`to_v`. These act on the
77-token text states only, so per-sample factors cost next to nothing beside the frozen UNet:
a batch can mix samples of many concepts and share the UNet's forward and backward passes. Each
projection gets a forward hook that adds `up[c] (down[c] x)` for the concept `c` of each batch
entry; the factors are float32 leaves (one tensor per matrix, concepts stacked on the first axis)
whatever the UNet's dtype, and the delta is computed outside autocast so it keeps their precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .layers import cross_attention_projections


class RoutedLoraBank:
    """Rank-r factors of `concepts` LoRAs for every edited projection of a UNet.

    `down[m]` is (concepts, r, d_in) and `up[m]` (concepts, d_out, r) for matrix `m`, both float32
    on the UNet's device; `route` holds, per batch entry of the next UNet call, its concept slot.

    Args:
        unet: the UNet whose cross-attention projections are adapted.
        concepts: how many concepts' LoRAs the bank holds.
        rank: the LoRA rank r.
    """

    def __init__(self, unet: nn.Module, concepts: int, rank: int) -> None:
        self.projections = cross_attention_projections(unet)
        device = next(iter(self.projections.values())).weight.device
        self.names = list(self.projections)
        self.rank = rank
        self.down = [
            torch.zeros(concepts, rank, layer.in_features, device=device)
            for layer in self.projections.values()
        ]
        self.up = [
            torch.zeros(concepts, layer.out_features, rank, device=device)
            for layer in self.projections.values()
        ]
        for tensor in self.parameters():
            tensor.requires_grad_(True)
        self.route = torch.zeros(1, dtype=torch.long, device=device)

    def parameters(self) -> list[torch.Tensor]:
        return self.down + self.up

    @torch.no_grad()
    def initialise(self, slot: int, generator: torch.Generator) -> None:
        """peft's default LoRA init for one concept: down ~ kaiming-uniform(a=sqrt(5)), which is
        U(-1/sqrt(d_in), 1/sqrt(d_in)), drawn matrix by matrix from `generator`; up = 0."""
        for down, up in zip(self.down, self.up, strict=True):
            bound = 1.0 / math.sqrt(down.shape[-1])
            values = torch.rand(down.shape[1:], generator=generator, dtype=torch.float32)
            down[slot] = (values * 2 - 1).mul_(bound).to(down.device)
            up[slot].zero_()

    def factors(self, slot: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One concept's `(up, down)` per matrix, float32 on the CPU."""
        return {
            name: (up[slot].detach().cpu().clone(), down[slot].detach().cpu().clone())
            for name, down, up in zip(self.names, self.down, self.up, strict=True)
        }

    def delta(self, index: int, states: torch.Tensor) -> torch.Tensor:
        """`up[c] (down[c] x)` for each batch entry's concept c: (batch, tokens, d_out), float32."""
        down = self.down[index].index_select(0, self.route)
        up = self.up[index].index_select(0, self.route)
        hidden = torch.bmm(states.float(), down.transpose(1, 2))
        return torch.bmm(hidden, up.transpose(1, 2))


@contextmanager
def routed_lora(unet: nn.Module, bank: RoutedLoraBank) -> Iterator[RoutedLoraBank]:
    """Add the bank's per-sample deltas to the UNet's projections while inside the block.

    The UNet's own parameters are frozen meanwhile (only the bank's factors get gradients);
    their `requires_grad` flags and the projections' hooks are restored on exit.
    """
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    handles = []
    try:
        for param in unet.parameters():
            param.requires_grad_(False)
        for index, layer in enumerate(bank.projections.values()):
            handles.append(layer.register_forward_hook(_delta_hook(bank, index)))
        yield bank
    finally:
        for handle in handles:
            handle.remove()
        for name, param in unet.named_parameters():
            param.requires_grad_(flags[name])


def _delta_hook(bank: RoutedLoraBank, index: int):
    def add_delta(module: nn.Module, inputs: Sequence[torch.Tensor], output: torch.Tensor):
        with torch.autocast(output.device.type, enabled=False):
            return output + bank.delta(index, inputs[0]).to(output.dtype)

    return add_delta
