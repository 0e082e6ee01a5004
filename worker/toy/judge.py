"""The judge: a small CNN that tells a toy-world image's object, style, colour and background.

Trained on rendered scenes only (their ground truth is free), with mild blur, noise, shifts and
tints so that it reads generated images, which are a little softer than renders, just as well.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .dataset import LABEL_NAMES, SceneSet, render_scenes

JUDGE_FILE = "judge.safetensors"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Judge(nn.Module):
    """Images in [0, 1], (N, 3, 32, 32) -> one logit vector per label kind."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        )
        self.hidden = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * width * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.2)
        )
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in LABEL_NAMES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.hidden(self.features(images * 2.0 - 1.0))
        return {kind: head(h) for kind, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Top-1 label indices per kind for images in [0, 1]."""
        self.eval()
        out: dict[str, list[np.ndarray]] = {k: [] for k in LABEL_NAMES}
        for start in range(0, len(images), batch_size):
            logits = self(images[start : start + batch_size].float())
            for kind, value in logits.items():
                out[kind].append(value.argmax(1).numpy())
        return {k: np.concatenate(v) for k, v in out.items()}


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = len(x)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=generator)

    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.lerp(x, blurred, uniform(0.0, 0.6, 1, 1, 1))
    x = x * uniform(0.9, 1.1, 3, 1, 1) + uniform(-0.05, 0.05, 1, 1, 1)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.05, 1, 1, 1)
    shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=shift, dims=(2, 3)).clamp(0.0, 1.0)


def accuracy(judge: Judge, scenes: SceneSet) -> dict[str, float]:
    """Top-1 accuracy per label kind on rendered scenes."""
    predicted = judge.predict(images_to_tensor(scenes.images))
    return {k: float((predicted[k] == scenes.labels[k]).mean()) for k in LABEL_NAMES}


@torch.no_grad()
def autoencoded(vae, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """`images` (N, H, W, 3) uint8 as an autoencoder gives them back (posterior means decoded)."""
    vae.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
        x = x.float() / 127.5 - 1.0
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1.0, 1.0)
        out.append(((decoded.permute(0, 2, 3, 1) + 1.0) * 127.5).round().byte().numpy())
    return np.concatenate(out)


def train_judge(
    seed: int = 0,
    scenes: int = 40_000,
    epochs: int = 6,
    batch_size: int = 128,
    workers: int = 2,
    autoencoder=None,
    held_out: int = 2_000,
    log=print,
) -> tuple[Judge, dict[str, float]]:
    """Train a judge on freshly rendered scenes; return it and its accuracy on unseen scenes.

    Args:
        seed: seeds the scenes, the initial weights, the batches and the augmentations.
        scenes: number of training scenes.
        epochs: passes over them.
        batch_size: scenes per step.
        workers: processes that render the scenes.
        autoencoder: a model's `AutoencoderKL`; if given, half of the training images are
            shown as it reconstructs them, so that the judge reads textures as that model's
            decoder draws them (fine random speckles come back as coarser blotches), and the
            accuracy on reconstructions is reported too (keys ending in "_autoencoded").
        held_out: number of unseen scenes the accuracy is measured on.
        log: called with one line of progress per epoch.
    """
    torch.manual_seed(seed)
    train = render_scenes(scenes, seed=seed, workers=workers)
    unseen = render_scenes(held_out, seed=seed + 1_000_003, workers=workers)
    images = images_to_tensor(train.images)
    decoded = images_to_tensor(autoencoded(autoencoder, train.images)) if autoencoder else None
    targets = {k: torch.from_numpy(v) for k, v in train.labels.items()}
    judge = Judge()
    steps = epochs * (len(train) // batch_size)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    for epoch in range(epochs):
        judge.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            batch = images[index]
            if decoded is not None:
                swap = torch.rand(len(index), generator=generator) < 0.5
                batch = torch.where(swap[:, None, None, None], decoded[index], batch)
            logits = judge(_augment(batch, generator))
            loss = sum(F.cross_entropy(logits[k], targets[k][index]) for k in logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        scores = _held_out_accuracy(judge, unseen, autoencoder)
        log(
            f"judge epoch {epoch + 1}/{epochs} loss {loss.item():.3f} "
            f"held-out {_format(scores)} {time.monotonic() - started:.0f}s"
        )
    return judge, _held_out_accuracy(judge, unseen, autoencoder)


def _held_out_accuracy(judge: Judge, held_out: SceneSet, autoencoder) -> dict[str, float]:
    scores = accuracy(judge, held_out)
    if autoencoder is not None:
        reconstructed = SceneSet(autoencoded(autoencoder, held_out.images), held_out.labels)
        scores.update({f"{k}_autoencoded": v for k, v in accuracy(judge, reconstructed).items()})
    return scores


def _format(scores: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in scores.items())


def save_judge(judge: Judge, path: str | Path) -> Path:
    """Write the judge's weights in fp16 (half the size; its verdicts do not change)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in judge.state_dict().items()
    }
    save_file(state, str(path))
    return path


def load_judge(path: str | Path) -> Judge:
    """A judge from `save_judge`'s file, in eval mode."""
    from safetensors.torch import load_file

    judge = Judge()
    judge.load_state_dict(load_file(str(path)))  # copied into the fp32 parameters
    return judge.eval()
