"""Text encoding: E(prompt), the text encoder's last hidden state padded to the full length."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

import torch

# Prompts per text-encoder call: a GPU is only busy with large batches; on the CPU larger
# batches gain nothing and hold more activations.
CUDA_BATCH_SIZE = 512
CPU_BATCH_SIZE = 32


def default_batch_size(device: torch.device) -> int:
    return CUDA_BATCH_SIZE if torch.device(device).type == "cuda" else CPU_BATCH_SIZE


@lru_cache(maxsize=16)
def has_float64(device: torch.device) -> bool:
    """Whether tensors on `device` can be float64 (CPU and CUDA can, MPS cannot)."""
    try:
        torch.zeros(1, dtype=torch.float64, device=device)
    except (RuntimeError, TypeError):
        return False
    return True


class PromptEncoder:
    """Encodes prompts as the pipeline does (padded to max length, last hidden state).

    Args:
        tokenizer: the pipeline's tokenizer.
        text_encoder: the pipeline's text encoder, on the device it runs on.
        batch_size: prompts per call; default 512 on CUDA, 32 elsewhere.
    """

    def __init__(self, tokenizer, text_encoder, batch_size: int | None = None):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.batch_size = batch_size or default_batch_size(text_encoder.device)
        self.max_length = tokenizer.model_max_length

    @property
    def width(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def statistics_device(self) -> torch.device:
        """Where float64 statistics of the embeddings are summed: the text encoder's device when
        it has float64 (no copy of the embeddings to the CPU), else the CPU."""
        device = torch.device(self.text_encoder.device)
        return device if has_float64(device) else torch.device("cpu")

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """(len(prompts), max_length, width) float32 on `device` (default the CPU)."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(device).float()

    def batches(
        self, prompts: Sequence[str], device: torch.device | str = "cpu"
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset, embeddings on `device`) per batch of `batch_size` prompts."""
        for start in range(0, len(prompts), self.batch_size):
            yield start, self.encode(prompts[start : start + self.batch_size], device)
