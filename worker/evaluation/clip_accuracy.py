"""Zero-shot CLIP accuracy over a label set, read as erasure efficacy, specificity, generality.

efficacy    = 1 - accuracy on images of the erased concepts' prompts (higher: erased better)
specificity =     accuracy on images of retained concepts' prompts (higher: kept better)
generality  = 1 - accuracy on images of the erased concepts' synonym prompts
H           = harmonic mean of those present.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from worker.erasure.errors import ErasureInputError

from .clip_models import DEFAULT_CLIP
from .metric_base import MetricContext, flatten
from .prompts import resolve_prompts

ROLES = ("erased", "retained", "synonyms")
DEFAULT_TEMPLATE = "a photo of {}"


def top1_correct(logits: torch.Tensor, truth: Sequence[int]) -> list[bool]:
    """Per image (row), whether the highest-scoring label is its true label."""
    predicted = logits.argmax(dim=-1).tolist()
    return [p == t for p, t in zip(predicted, truth, strict=True)]


def harmonic_mean(values: Sequence[float]) -> float:
    if not values or any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def erasure_accuracy_scores(correct_by_role: dict[str, Sequence[bool]]) -> dict:
    """Efficacy, specificity, generality and H from per-image top-1 hits, by prompt role."""
    scores = {}
    for role, key, invert in (
        ("erased", "efficacy", True),
        ("retained", "specificity", False),
        ("synonyms", "generality", True),
    ):
        hits = correct_by_role.get(role)
        if hits:
            accuracy = sum(hits) / len(hits)
            scores[key] = 1.0 - accuracy if invert else accuracy
            scores[f"{role}_accuracy"] = accuracy
            scores[f"{role}_images"] = len(hits)
    present = [scores[k] for k in ("efficacy", "specificity", "generality") if k in scores]
    scores["H"] = harmonic_mean(present)
    return scores


class ClipAccuracyMetric:
    """Config: {"erased": [{"label": "cat", "prompts": [...]}], "retained": [...],
    "synonyms": [...], "labels": [extra labels], "label_template": "a photo of {}"}."""

    name = "clip_accuracy"

    def __init__(self, config: dict, context: MetricContext):
        self.model_name = config.get("model", config.get("clip_model_name", DEFAULT_CLIP))
        self.template = config.get("label_template", DEFAULT_TEMPLATE)
        if "{}" not in self.template:
            raise ErasureInputError("label_template must contain {} where the label goes")
        self.groups: dict[str, list[tuple[str, list]]] = {}
        for role in ROLES:
            for entry in config.get(role) or []:
                if not isinstance(entry, dict) or not entry.get("label") or "prompts" not in entry:
                    raise ErasureInputError(f"each {role} entry needs a label and prompts")
                records = resolve_prompts(
                    entry["prompts"],
                    context.prompt_sets,
                    allow_paths=context.allow_paths,
                    what=f"{role} prompts",
                )
                self.groups.setdefault(role, []).append((str(entry["label"]), records))
        if "erased" not in self.groups or "retained" not in self.groups:
            raise ErasureInputError("clip_accuracy needs erased and retained prompt groups")
        labels = [label for entries in self.groups.values() for label, _ in entries]
        self.labels = list(dict.fromkeys([*labels, *(config.get("labels") or [])]))
        self.source: dict = {"name": self.model_name}

    def prompt_groups(self) -> dict:
        return {
            f"{role}:{i}": records
            for role, entries in self.groups.items()
            for i, (_, records) in enumerate(entries)
        }

    def evaluate(self, images: dict, resources) -> dict:
        clip = resources.clip(self.model_name)
        self.source = clip.source
        label_embeddings = clip.text_embeddings([self.template.format(x) for x in self.labels])
        correct: dict[str, list[bool]] = {}
        for role, entries in self.groups.items():
            for i, (label, _) in enumerate(entries):
                pictures, _ = flatten(images[f"{role}:{i}"])
                logits = clip.image_embeddings(pictures) @ label_embeddings.T
                truth = [self.labels.index(label)] * len(pictures)
                correct.setdefault(role, []).extend(top1_correct(logits, truth))
        scores = erasure_accuracy_scores(correct)
        return {"value": scores["H"], "details": scores}

    def describe(self) -> dict:
        return {
            "model": self.source,
            "labels": self.labels,
            "label_template": self.template,
            "groups": {
                role: [{"label": lbl, "prompts": [r.to_dict() for r in recs]} for lbl, recs in e]
                for role, e in self.groups.items()
            },
        }
