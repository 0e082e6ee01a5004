"""The toy model's autoencoder: reconstruction training and the latents the UNet learns on."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

KL_WEIGHT = 1e-6  # as in SD's autoencoder: enough to keep latents bounded, not to blur them


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], the autoencoder's input."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def reconstruction_step(vae, optimizer, images: torch.Tensor, generator: torch.Generator) -> float:
    """One optimisation step of reconstruction (L2 + L1) plus a small KL term; returns the loss."""
    posterior = vae.encode(images).latent_dist
    decoded = vae.decode(posterior.sample(generator=generator)).sample
    loss = (
        F.mse_loss(decoded, images)
        + 0.5 * F.l1_loss(decoded, images)
        + KL_WEIGHT * posterior.kl().mean()
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def encode_scenes(
    vae, images: np.ndarray, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of every image, unscaled."""
    vae.eval()
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(to_model_range(images[start : start + batch_size])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(means: torch.Tensor, stds: torch.Tensor, seed: int) -> float:
    """1 / the standard deviation of sampled latents, so the UNet sees unit variance (as SD's
    0.18215 was chosen)."""
    generator = torch.Generator().manual_seed(seed)
    sample = means + stds * torch.randn(means.shape, generator=generator)
    return float(1.0 / sample.std())


@torch.no_grad()
def reconstruction_psnr(vae, images: np.ndarray) -> float:
    """Mean PSNR (dB, images in [0, 1]) of the autoencoder's deterministic reconstructions."""
    vae.eval()
    x = to_model_range(images)
    decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((decoded - x) / 2).pow(2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())
