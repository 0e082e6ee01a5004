"""How well a pipeline draws each toy concept, as read by the judge.

A concept's accuracy is the share of images generated from prompts naming it whose judged label
(of the concept's kind) is the concept. Erasure is measured as the drop of this number on erased
concepts, and preservation as its stability on the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .dataset import LABEL_NAMES
from .judge import Judge
from .prompts import CONCEPTS, concept, concept_prompts
from .world import SceneLabels

SAMPLING_STEPS = 25
GUIDANCE_SCALE = 7.5


@torch.no_grad()
def generate_images(
    pipe,
    prompts: list[str],
    seeds: list[int],
    steps: int = SAMPLING_STEPS,
    guidance_scale: float = GUIDANCE_SCALE,
    batch_size: int = 64,
) -> np.ndarray:
    """Images for `prompts`, one seed each, as (N, H, W, 3) uint8.

    Args:
        pipe: a Stable Diffusion pipeline.
        prompts: one prompt per image.
        seeds: the seed of each image's initial noise; an image depends on its prompt and seed only.
        steps: sampling steps.
        guidance_scale: classifier-free guidance scale.
        batch_size: images per pipeline call.
    """
    pipe.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]]
        images = pipe(
            prompt=batch,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="np",
        ).images
        out.append(np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def judged_correct(judge: Judge, images: np.ndarray, labels: list[SceneLabels], kind: str):
    """Whether the judge reads each image's `kind` label as the expected one."""
    from .judge import images_to_tensor

    predicted = judge.predict(images_to_tensor(images))[kind]
    expected = np.array([LABEL_NAMES[kind].index(getattr(label, kind)) for label in labels])
    return predicted == expected


@dataclass
class ConceptScores:
    """Judge accuracy per concept on canonical prompts, and per concept on synonym prompts."""

    per_concept: dict[str, float]
    per_synonym_concept: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_concept.values())))

    @property
    def synonym_mean(self) -> float:
        values = list(self.per_synonym_concept.values())
        return float(np.mean(values)) if values else float("nan")

    def kind_mean(self, kind: str) -> float:
        return float(np.mean([v for k, v in self.per_concept.items() if concept(k).kind == kind]))

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "synonym_mean": self.synonym_mean,
            "object_mean": self.kind_mean("object"),
            "style_mean": self.kind_mean("style"),
            "per_concept": self.per_concept,
            "per_synonym_concept": self.per_synonym_concept,
        }


def evaluation_prompts(
    names: list[str], per_concept: int, seed: int, synonyms: bool
) -> list[tuple[str, str, SceneLabels]]:
    """(concept, prompt, labels) triples: canonical forms, or each concept's other forms in turn.

    Args:
        names: concepts to cover.
        per_concept: prompts per concept.
        seed: seeds the draw of the other attributes.
        synonyms: use the non-canonical surface forms (concepts without any are skipped).
    """
    triples = []
    for k, name in enumerate(names):
        forms = concept(name).surface_forms
        if synonyms and len(forms) == 1:
            continue
        choices = forms[1:] if synonyms else forms[:1]
        for j in range(per_concept):
            form = choices[j % len(choices)]
            [(prompt, labels)] = concept_prompts(name, 1, [seed, k, j, synonyms], form=form)
            triples.append((name, prompt, labels))
    return triples


def score_concepts(
    pipe,
    judge: Judge,
    per_concept: int = 8,
    seed: int = 0,
    names: list[str] | None = None,
    synonyms: bool = True,
    steps: int = SAMPLING_STEPS,
    guidance_scale: float = GUIDANCE_SCALE,
    batch_size: int = 64,
) -> ConceptScores:
    """Generate images for every concept and score them with the judge.

    Args:
        pipe: the pipeline to score (a base or an erased model).
        judge: reads object, style, colour and background.
        per_concept: images per concept (and per concept again for synonym prompts).
        seed: seeds the prompts' other attributes and each image's noise.
        names: concepts to score; all by default.
        synonyms: also score prompts that use the non-canonical surface forms.
        steps: sampling steps.
        guidance_scale: classifier-free guidance scale.
        batch_size: images per pipeline call.
    """
    names = names or [c.name for c in CONCEPTS]
    triples = evaluation_prompts(names, per_concept, seed, synonyms=False)
    if synonyms:
        triples += [
            ("~" + n, p, lab)
            for n, p, lab in evaluation_prompts(names, per_concept, seed + 1, synonyms=True)
        ]
    seeds = [seed * 1_000_003 + i for i in range(len(triples))]
    images = generate_images(
        pipe, [p for _, p, _ in triples], seeds, steps, guidance_scale, batch_size
    )
    hits: dict[str, list[bool]] = {}
    for kind in ("object", "style"):
        rows = [i for i, (n, _, _) in enumerate(triples) if concept(n.lstrip("~")).kind == kind]
        if not rows:
            continue
        correct = judged_correct(judge, images[rows], [triples[i][2] for i in rows], kind)
        for i, ok in zip(rows, correct, strict=True):
            hits.setdefault(triples[i][0], []).append(bool(ok))
    per_concept_scores = {n: float(np.mean(hits[n])) for n in names}
    per_synonym = {n[1:]: float(np.mean(v)) for n, v in hits.items() if n.startswith("~")}
    return ConceptScores(per_concept_scores, per_synonym)
