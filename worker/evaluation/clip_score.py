"""CLIP score: 100 * max(cos(image, prompt), 0), averaged over every image of every prompt."""

from __future__ import annotations

import torch

from .clip_models import DEFAULT_CLIP
from .metric_base import MetricContext, flatten


def clip_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Per pair (row i of both), 100 * max(cos, 0); the inputs need not be normalised."""
    images = image_embeddings.double()
    texts = text_embeddings.double()
    cosine = torch.nn.functional.cosine_similarity(images, texts, dim=-1)
    return 100.0 * cosine.clamp_min(0.0)


class ClipScoreMetric:
    """Prompt faithfulness of the generated images (higher: closer to the prompt)."""

    name = "clip_score"

    def __init__(self, config: dict, context: MetricContext):
        self.model_name = config.get("model", config.get("clip_model_name", DEFAULT_CLIP))
        self.prompts = context.prompts(config, "prompts")
        self.source: dict = {"name": self.model_name}

    def prompt_groups(self) -> dict:
        return {"prompts": self.prompts}

    def evaluate(self, images: dict, resources) -> dict:
        clip = resources.clip(self.model_name)
        self.source = clip.source
        pictures, owners = flatten(images["prompts"])
        texts = [self.prompts[i].text for i in owners]
        scores = clip_scores(clip.image_embeddings(pictures), clip.text_embeddings(texts))
        per_prompt = [
            [round(float(s), 4) for s, o in zip(scores, owners, strict=True) if o == i]
            for i in range(len(self.prompts))
        ]
        return {
            "value": float(scores.mean()),
            "details": {"per_prompt": per_prompt, "images": len(pictures)},
        }

    def describe(self) -> dict:
        return {"model": self.source, "prompts": [p.to_dict() for p in self.prompts]}
