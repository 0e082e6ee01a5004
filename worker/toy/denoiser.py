"""Joint training of the UNet and the text encoder: SD's epsilon-prediction objective."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction, min(SNR, gamma) / SNR.

    Low-noise steps, where the prompt barely matters, stop dominating the loss; this speeds up
    learning of what the prompt controls (Hang et al., 2023).
    """
    alphas = noise_scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1.0 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def denoising_loss(
    unet,
    text_encoder,
    noise_scheduler,
    latents: torch.Tensor,
    input_ids: torch.Tensor,
    generator: torch.Generator,
    min_snr_gamma: float | None,
) -> torch.Tensor:
    """The weighted MSE between the added noise and the UNet's prediction of it.

    Args:
        unet: the denoiser.
        text_encoder: CLIP text model; its last hidden state conditions the UNet, as in SD.
        noise_scheduler: defines the forward process (betas, 1000 steps).
        latents: scaled autoencoder latents of the batch.
        input_ids: token ids, padded to the tokenizer's length as the pipeline pads them.
        generator: draws the noise and the timesteps.
        min_snr_gamma: weighting parameter; None for the unweighted loss.
    """
    noise = torch.randn(latents.shape, generator=generator)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (len(latents),), generator=generator)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    context = text_encoder(input_ids)[0]
    predicted = unet(noisy, timesteps, context).sample
    per_sample = F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma is None:
        return per_sample.mean()
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, min_snr_gamma)).mean()


def learning_rate(peak: float, step: int, warmup: int, progress: float, floor: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `floor * peak` as `progress` -> 1."""
    ramp = min(1.0, (step + 1) / warmup)
    progress = min(max(progress, 0.0), 1.0)
    return peak * ramp * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class ExponentialAverage:
    """An exponential moving average of some modules' parameters, kept in copies of them."""

    def __init__(self, modules: list[torch.nn.Module], copies: list[torch.nn.Module], decay: float):
        self.sources = [p for m in modules for p in m.parameters()]
        self.targets = [p for m in copies for p in m.parameters()]
        for target in self.targets:
            target.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        # a short memory early on, so the average does not drag the random initial weights along
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.targets, [p.detach() for p in self.sources], 1.0 - decay)
