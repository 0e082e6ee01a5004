"""AdamW with gradient clipping for concepts stacked on a tensor's first axis.

Training several concepts' LoRAs in one pass must leave each concept's optimisation exactly as if
it were trained alone: its own learning rate, its own gradient-norm clip, its own Adam moments and
step count, and no update at all once its steps are done. This does `torch.optim.AdamW` and
`clip_grad_norm_` per concept slot with tensor ops only (no host synchronisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ConceptAdamW:
    """Per-concept AdamW over parameters shaped (concepts, ...).

    Args:
        params: float32 leaves whose first axis is the concept slot.
        learning_rates: one per concept.
        weight_decays: one per concept (decoupled, as in AdamW).
        max_grad_norms: one per concept: each concept's gradients over all `params` are scaled as
            `clip_grad_norm_` would scale them if that concept were trained alone.
        betas: Adam's moment decays.
        eps: Adam's denominator term.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        *,
        learning_rates: Sequence[float],
        weight_decays: Sequence[float],
        max_grad_norms: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        device = self.params[0].device
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
        self.lr = as_tensor(learning_rates)
        self.weight_decay = as_tensor(weight_decays)
        self.max_norm = as_tensor(max_grad_norms)
        self.steps = torch.zeros_like(self.lr)
        self.betas, self.eps = betas, eps
        self.first = [torch.zeros_like(p) for p in self.params]
        self.second = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One update of the concepts where `active` (bool, one per concept) is true."""
        beta1, beta2 = self.betas
        gate = active.to(self.lr.dtype)
        self.steps += gate
        counted = self.steps.clamp(min=1)
        scale = self.lr / (1 - beta1**counted)
        root_correction = (1 - beta2**counted).sqrt()
        clip = self._clip_coefficients()
        for param, first, second in zip(self.params, self.first, self.second, strict=True):
            view = (-1,) + (1,) * (param.dim() - 1)
            grad = _grad(param) * clip.view(view)
            on = gate.view(view)
            param.mul_(1 - on * (self.lr * self.weight_decay).view(view))
            first.lerp_(grad, on * (1 - beta1))
            second.mul_(1 - on * (1 - beta2)).add_(on * (1 - beta2) * grad * grad)
            denominator = second.sqrt() / root_correction.view(view) + self.eps
            param.sub_(on * scale.view(view) * first / denominator)

    def _clip_coefficients(self) -> torch.Tensor:
        squares = sum(_grad(p).float().pow(2).flatten(1).sum(1) for p in self.params)
        return (self.max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)


def _grad(param: torch.Tensor) -> torch.Tensor:
    return param.grad if param.grad is not None else torch.zeros_like(param)
