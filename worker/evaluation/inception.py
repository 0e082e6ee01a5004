"""Image feature extractors for FID: NVIDIA's TorchScript Inception, or any module given.

`inception-2015-12-05.pt` (published with NVIDIA's StyleGAN2-ADA/StyleGAN3 and used by
clean-fid) loads with `torch.jit.load` and needs no torchvision; called with
`return_features=True` on 0-255 RGB images it returns the 2048-d pool features.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.erasure.edit import file_sha256
from worker.erasure.errors import ModelNotFoundError

INCEPTION_ENV = "MACE_INCEPTION_PATH"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
    + INCEPTION_FILE
)


class ModuleFeatures:
    """Features of PIL images from a module taking float N x 3 x size x size RGB in [0, 255]."""

    def __init__(self, module, image_size: int, source: dict, batch_size: int = 16):
        self.module = module
        self.image_size = image_size
        self.source = source
        self.batch_size = batch_size

    def pixels(self, images) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        arrays = [
            np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32)
            for im in images
        ]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def features(self, images) -> np.ndarray:
        rows = []
        for start in range(0, len(images), self.batch_size):
            batch = self.pixels(images[start : start + self.batch_size])
            rows.append(self.module(batch).double().cpu().numpy())
        return np.concatenate(rows)


class _PoolFeatures(torch.nn.Module):
    def __init__(self, scripted):
        super().__init__()
        self.scripted = scripted

    def forward(self, images):
        return self.scripted(images, return_features=True)


def inception_path(given: str | None = None) -> Path:
    """The Inception file from the config, else $MACE_INCEPTION_PATH; a clear error if absent."""
    candidate = given or os.environ.get(INCEPTION_ENV)
    if candidate and Path(candidate).expanduser().is_file():
        return Path(candidate).expanduser().resolve()
    where = f"{candidate!r} does not exist; " if candidate else ""
    raise ModelNotFoundError(
        f"FID needs NVIDIA's TorchScript Inception weights ({INCEPTION_FILE}): {where}download "
        f"it on a machine with internet access ({INCEPTION_URL}), copy it here and give its path "
        f"as the fid metric's inception_path or in the {INCEPTION_ENV} environment variable"
    )


def load_inception(given: str | None = None) -> ModuleFeatures:
    path = inception_path(given)
    scripted = torch.jit.load(str(path), map_location="cpu").eval()
    source = {"name": INCEPTION_FILE, "path": str(path), "sha256": file_sha256(path)}
    return ModuleFeatures(_PoolFeatures(scripted), 299, source)
