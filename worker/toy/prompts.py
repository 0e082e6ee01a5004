"""The toy world's language: concepts, their surface forms (synonyms) and the prompt grammar.

Every surface form of every concept appears in training prompts, drawn uniformly, so a model
trained on `training_examples` knows all of them; attributes a prompt leaves out are drawn at
random in the image, as in real captions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import BACKGROUNDS, COLOURS, OBJECTS, STYLE_NAMES, SceneLabels, random_labels, render

OBJECT_FORMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star", "pentagram"),
    "heart": ("heart", "valentine"),
    "moon": ("moon", "crescent"),
    "arrow": ("arrow", "pointer"),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
    "ring": ("ring", "donut"),
    "house": ("house", "cottage"),
    "tree": ("tree", "pine"),
    "lightning": ("lightning bolt", "thunderbolt"),
    "droplet": ("droplet", "raindrop"),
    "cloud": ("cloud",),
    "flower": ("flower", "blossom"),
    "sun": ("sun",),
    "smiley": ("smiley", "happy face"),
    "mushroom": ("mushroom",),
    "umbrella": ("umbrella", "parasol"),
    "cup": ("cup", "mug"),
    "fish": ("fish",),
    "hourglass": ("hourglass",),
    "crown": ("crown",),
    "flag": ("flag",),
    "shield": ("shield",),
    "gear": ("gear", "cog"),
}

STYLE_FORMS: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "filled"),
    "outlined": ("outlined", "hollow"),
    "dashed": ("dashed",),
    "striped": ("striped", "banded"),
    "hatched": ("hatched",),
    "checkered": ("checkered", "checkerboard"),
    "dotted": ("dotted", "polka dot"),
    "gridded": ("gridded",),
    "zigzag": ("zigzag",),
    "speckled": ("speckled", "grainy"),
    "gradient": ("gradient", "faded"),
    "glowing": ("glowing", "neon"),
    "shadowed": ("shadowed",),
    "concentric": ("concentric", "nested"),
    "stencil": ("stencil", "cutout"),
}

# How often a training prompt names each attribute (the object is always named).
MENTION_STYLE = 0.85
MENTION_COLOUR = 0.8
MENTION_BACKGROUND = 0.6


@dataclass(frozen=True)
class Concept:
    """An erasable concept: its label in the world, its kind and the words that name it."""

    name: str
    kind: str  # "object" or "style"
    surface_forms: tuple[str, ...]

    @property
    def has_synonyms(self) -> bool:
        return len(self.surface_forms) > 1


CONCEPTS: tuple[Concept, ...] = tuple(
    [Concept(name, "object", OBJECT_FORMS[name]) for name in OBJECTS]
    + [Concept(name, "style", STYLE_FORMS[name]) for name in STYLE_NAMES]
)


def concept(name: str) -> Concept:
    """The concept labelled `name` (KeyError if the world has none)."""
    for c in CONCEPTS:
        if c.name == name:
            return c
    raise KeyError(name)


@dataclass(frozen=True)
class Wording:
    """Which attributes a prompt names, and by which surface forms."""

    object_form: str
    style_form: str | None
    colour: bool
    background: bool


def random_wording(
    labels: SceneLabels,
    rng: np.random.Generator,
    object_form: str | None = None,
    style_form: str | None = None,
) -> Wording:
    """A wording drawn with the grammar's mention rates; a given form is always used."""
    objects, styles = OBJECT_FORMS[labels.object], STYLE_FORMS[labels.style]
    if style_form is None and rng.random() < MENTION_STYLE:
        style_form = styles[rng.integers(len(styles))]
    return Wording(
        object_form=object_form or objects[rng.integers(len(objects))],
        style_form=style_form,
        colour=bool(rng.random() < MENTION_COLOUR),
        background=bool(rng.random() < MENTION_BACKGROUND),
    )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" or word.startswith("hour") else "a"


def describe(labels: SceneLabels, wording: Wording, rng: np.random.Generator) -> str:
    """A prompt for `labels` naming what `wording` says, in one of the grammar's phrasings.

    Args:
        labels: the scene the prompt describes.
        wording: which attributes to name, and the surface forms to name them by.
        rng: picks the phrasing.
    """
    noun = wording.object_form
    if wording.colour:
        noun = f"{labels.colour} {noun}"
    style = wording.style_form
    phrasing = rng.integers(4) if style else 0
    if style and phrasing == 1:
        noun = f"{style} {noun}"
    text = f"{_article(noun)} {noun}"
    if style and phrasing == 0:
        text = f"{text} in {style} style"
    elif style and phrasing == 2:
        text = f"{text} drawn in {style} style"
    if wording.background:
        text += (
            f" on a {labels.background} background"
            if rng.random() < 0.7
            else f", {labels.background} background"
        )
    if style and phrasing == 3:
        text += f", {style}"
    if rng.random() < 0.2:
        text = f"an icon of {text}"
    return text


@dataclass(frozen=True)
class Example:
    """One training pair and its ground truth."""

    prompt: str
    image: Image.Image
    labels: SceneLabels


def training_captions(seed: int) -> Iterator[tuple[str, SceneLabels]]:
    """An endless, seeded stream of (prompt, labels) pairs from the grammar.

    Args:
        seed: the stream is a function of it alone.
    """
    rng = np.random.default_rng(seed)
    while True:
        labels = random_labels(rng)
        yield describe(labels, random_wording(labels, rng), rng), labels


def training_examples(seed: int) -> Iterator[Example]:
    """An endless, seeded stream of (prompt, image, labels) covering every surface form.

    Args:
        seed: the stream is a function of it alone.
    """
    drawing = np.random.default_rng([seed, 1])
    for prompt, labels in training_captions(seed):
        yield Example(prompt, render(labels, drawing), labels)


def concept_prompts(
    name: str, count: int, seed: int | Sequence[int], form: str | None = None
) -> list[tuple[str, SceneLabels]]:
    """`count` prompts that name concept `name` (by `form` if given), with the labels to expect.

    The other attributes are drawn at random and named at the grammar's usual rates.

    Args:
        name: a concept label (an object or a style).
        count: number of prompts.
        seed: seeds the draw (an int or a sequence of ints).
        form: the surface form to use; by default each prompt draws one.
    """
    c = concept(name)
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(count):
        labels = random_labels(rng, **{c.kind: name})
        chosen = form or c.surface_forms[rng.integers(len(c.surface_forms))]
        if c.kind == "object":
            wording = random_wording(labels, rng, object_form=chosen)
        else:
            wording = random_wording(labels, rng, style_form=chosen)
        prompts.append((describe(labels, wording, rng), labels))
    return prompts


def vocabulary() -> dict[str, tuple[str, ...]]:
    """Every word list of the grammar: concepts' forms and the context words."""
    return {
        **{c.name: c.surface_forms for c in CONCEPTS},
        "colours": tuple(COLOURS),
        "backgrounds": tuple(BACKGROUNDS),
    }


def erasure_templates(kind: str, count: int = 30, seed: int = 0) -> tuple[str, ...]:
    """`count` distinct prompts of the grammar with "{}" where a concept of `kind` goes: the
    prompt templates an erasure on the toy model uses (`ConceptGroup.templates`)."""
    rng = np.random.default_rng([seed, 11, 0 if kind == "object" else 1])
    templates: dict[str, None] = {}
    while len(templates) < count:
        labels = random_labels(rng)
        if kind == "object":
            wording = random_wording(labels, rng, object_form="{}")
        else:
            wording = random_wording(labels, rng, style_form="{}")
        text = describe(labels, wording, rng)
        if text.count("{}") == 1:
            templates[text] = None
    return tuple(templates)


# The settings an erasure on the toy model takes beyond the kind defaults (which are the paper's,
# for Stable Diffusion). The LoRAs need a rate far above the paper's to move this small model at
# all; rank 2 gave a higher harmonic mean than the paper's rank 1 at every N. The LoRA loss
# leaves out the end and padding tokens, which raised efficacy at N = 5 and 20: those ~70
# positions are alike in every prompt, so what a LoRA changes for them reaches every prompt and
# fusion's preservation term takes it back (and CFR already maps them, in the target prompts, to
# the anchor's). Fusion's preservation term keeps CFR's and the LoRAs' change off the other
# prompts; its weight trades efficacy against specificity (`bench/toy_world.py` measures both).
# Its statistic P counts each caption's own tokens and end token: over all 77 positions, the
# start and padding positions, alike in every caption, hold most of P (88% of its trace here).
# With the words only, the same weight kept the retained objects far better (drop at N = 20
# 0.130 -> 0.043) for some efficacy (0.956 -> 0.850); bench/results/toy_world_all_tokens.json
# measures the paper's P.
# Objects take a higher rate and a lower fusion weight than styles: erasing many objects from
# this small model needs it (H at N = 5 and 20), and on styles it cost the retained concepts.
_SHARED_SETTINGS = {
    "lora_rank": 2,
    "lora_suppress_end_tokens": False,
    "preservation_tokens": "words",
}
ERASURE_SETTINGS = {
    "object": {**_SHARED_SETTINGS, "lora_learning_rate": 4e-3, "fusion_preservation_weight": 0.25},
    "style": {**_SHARED_SETTINGS, "lora_learning_rate": 3e-3, "fusion_preservation_weight": 0.3},
}

# The anchors of toy erasures. The paper's empty anchor for objects moves every token after the
# phrase one position left, and this small text encoder writes position strongly into its
# outputs: CFR would learn that shift and move every prompt, erasing many retained objects too.
# "shape" is one token the world never uses, so positions pair one to one. Like every prompt
# that names no object, it draws a ring or a circle, so those two erase least.
ANCHORS = {"object": "shape", "style": "art"}


def captions_without(erased: Sequence[str], count: int = 200, seed: int = 1) -> tuple[str, ...]:
    """`count` training captions that name none of the `erased` concepts' surface forms: the
    preservation prompts of an erasure on the toy model."""
    words = {form for c in CONCEPTS if c.name in erased for form in c.surface_forms}
    captions = []
    for caption, _labels in training_captions(seed):
        padded = f" {caption.replace(',', ' ')} "
        if not any(f" {w} " in padded for w in words):
            captions.append(caption)
        if len(captions) == count:
            break
    return tuple(captions)


def preservation_prompt_set(erased: Sequence[str]) -> dict:
    """The body of `POST /prompt-sets` holding the preservation captions for `erased`."""
    return {
        "name": f"toy captions without {', '.join(erased)}",
        "prompts": list(captions_without(erased)),
    }


def erasure_request(name: str, base_model: str, prompt_set_id: str, options: dict) -> dict:
    """The body of `POST /erasures` that erases toy concept `name` (all its surface forms).

    Args:
        name: a concept label of the world.
        base_model: the catalogued toy model's name.
        prompt_set_id: a prompt set made from `preservation_prompt_set([name])`.
        options: engine options on top of the toy settings (image counts, steps ...).
    """
    c = concept(name)
    return {
        "base_model": base_model,
        "concepts": [
            {
                "targets": list(c.surface_forms),
                "kind": c.kind,
                "anchor": ANCHORS[c.kind],
                "templates": list(erasure_templates(c.kind)),
            }
        ],
        "preservation_prompt_set": prompt_set_id,
        "name": f"{base_model} without {name}",
        **options,
        **ERASURE_SETTINGS[c.kind],
    }
