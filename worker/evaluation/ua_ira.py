"""eval-learn's UA / IRA, counted per image.

UA  = share of target-concept images CLIP does NOT classify as the target concept;
IRA = share of retained-concept images CLIP classifies as the retained concept;
value = (UA + IRA) / 2. Captions are "Image of {concept}" as in eval-learn. Each image keeps
the role of the prompt it was drawn for, so the split is right for any number of prompts and
batches (eval-learn splits every batch at the first batch's target count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .clip_models import DEFAULT_CLIP
from .metric_base import MetricContext, flatten

TARGET, RETAINED = 0, 1


def ua_ira_from_logits(
    target_logits: torch.Tensor, retained_logits: torch.Tensor
) -> dict[str, float | int]:
    """UA and IRA from per-image logits over the two captions (column 0 target, 1 retained)."""
    target_pred = target_logits.argmax(dim=-1).tolist() if len(target_logits) else []
    retained_pred = retained_logits.argmax(dim=-1).tolist() if len(retained_logits) else []
    return ua_ira_from_predictions(target_pred, retained_pred)


def ua_ira_from_predictions(
    target_predictions: Sequence[int], retained_predictions: Sequence[int]
) -> dict[str, float | int]:
    target_correct = sum(1 for p in target_predictions if p != TARGET)
    retained_correct = sum(1 for p in retained_predictions if p == RETAINED)
    ua = target_correct / len(target_predictions) if target_predictions else 0.0
    ira = retained_correct / len(retained_predictions) if retained_predictions else 0.0
    return {
        "ua": ua,
        "ira": ira,
        "value": (ua + ira) / 2,
        "target_correct": target_correct,
        "target_total": len(target_predictions),
        "retain_correct": retained_correct,
        "retain_total": len(retained_predictions),
    }


class UaIraMetric:
    """Config (eval-learn's names): target_prompts(_path), retain_prompts(_path),
    target_concept, retain_concept, clip_model_name, target/retain_prompt_limit."""

    name = "ua_ira"

    def __init__(self, config: dict, context: MetricContext):
        self.model_name = config.get("clip_model_name", config.get("model", DEFAULT_CLIP))
        self.target_concept = str(config.get("target_concept", "target_concept"))
        self.retain_concept = str(config.get("retain_concept", "retain_concept"))
        self.target = context.prompts(_limits(config, "target"), "target_prompts", required=True)
        self.retain = context.prompts(_limits(config, "retain"), "retain_prompts", required=True)
        self.source: dict = {"name": self.model_name}

    @property
    def captions(self) -> list[str]:
        return [f"Image of {self.target_concept}", f"Image of {self.retain_concept}"]

    def prompt_groups(self) -> dict:
        return {"target": self.target, "retain": self.retain}

    def evaluate(self, images: dict, resources) -> dict:
        clip = resources.clip(self.model_name)
        self.source = clip.source
        captions = clip.text_embeddings(self.captions)
        logits = {}
        for role in ("target", "retain"):
            pictures, _ = flatten(images[role])
            logits[role] = clip.image_embeddings(pictures) @ captions.T
        scores = ua_ira_from_logits(logits["target"], logits["retain"])
        return {"value": scores.pop("value"), "details": scores}

    def describe(self) -> dict:
        return {
            "model": self.source,
            "captions": self.captions,
            "target_prompts": [p.to_dict() for p in self.target],
            "retain_prompts": [p.to_dict() for p in self.retain],
        }


def _limits(config: dict, role: str) -> dict:
    """eval-learn's `<role>_prompt_limit` as the generic `<role>_prompts_limit`."""
    renamed = {k: v for k, v in config.items() if k != "limit"}
    if config.get(f"{role}_prompt_limit") is not None:
        renamed[f"{role}_prompts_limit"] = config[f"{role}_prompt_limit"]
    return renamed
