"""Text encoding: E(prompt), the text encoder's last hidden state padded to the full length."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class PromptEncoder:
    """Encodes prompts as the pipeline does (padded to max length, last hidden state)."""

    def __init__(self, tokenizer, text_encoder, batch_size: int = 32):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.batch_size = batch_size
        self.max_length = tokenizer.model_max_length

    @property
    def width(self) -> int:
        return self.text_encoder.config.hidden_size

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), max_length, width) float32 on the CPU."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0].float().cpu()

    def batches(self, prompts: Sequence[str]) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset, embeddings) per batch of `batch_size` prompts."""
        for start in range(0, len(prompts), self.batch_size):
            yield start, self.encode(prompts[start : start + self.batch_size])
