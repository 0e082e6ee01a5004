"""Concept groups: what to erase, its synonyms, its kind and the anchor it is mapped to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from .errors import ErasureInputError
from .templates import TEMPLATES, TRAINING_IMAGE_PROMPT

Kind = Literal["object", "person", "style", "explicit"]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass(frozen=True)
class KindDefaults:
    """Per-kind defaults from the paper's released configurations (see the MACE spec)."""

    anchor: str
    cfr_lambda: float
    preservation_weight: float
    lora_lr: float
    lora_steps: int
    cfis: bool


KIND_DEFAULTS: dict[str, KindDefaults] = {
    "object": KindDefaults("", 1e2, 0.0, 1e-5, 50, True),
    "person": KindDefaults("a person", 0.0, 1.0, 1e-4, 50, True),
    "explicit": KindDefaults("a person wearing clothes", 0.0, 1.0, 1e-5, 120, False),
    "style": KindDefaults("art", 0.0, 1.0, 1e-4, 50, True),
}


@dataclass(frozen=True)
class ConceptGroup:
    """One erased concept: the phrase and its synonyms, all erased and all mapped to `anchor`."""

    targets: tuple[str, ...]
    kind: str = "object"
    anchor: str | None = None
    # The group's own prompt templates ("{}" = the phrase), for a model that speaks a language of
    # its own; empty: the kind's templates. They also draw the stage-2 training images, in turn.
    templates: tuple[str, ...] = ()
    _resolved_anchor: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            raise ErasureInputError("targets must be a list of phrases, not one string")
        targets = tuple(" ".join(t.split()) for t in self.targets)
        if not targets or any(not t for t in targets):
            raise ErasureInputError("a concept group needs at least one non-empty target phrase")
        if len(set(t.lower() for t in targets)) != len(targets):
            raise ErasureInputError(f"duplicate target phrases in {list(targets)}")
        if self.kind not in KIND_DEFAULTS:
            raise ErasureInputError(f"unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        object.__setattr__(self, "targets", targets)
        templates = tuple(self.templates)
        if isinstance(self.templates, str) or any(t.count("{}") != 1 for t in templates):
            raise ErasureInputError('each prompt template must hold "{}" exactly once')
        object.__setattr__(self, "templates", templates)
        anchor = KIND_DEFAULTS[self.kind].anchor if self.anchor is None else self.anchor
        object.__setattr__(self, "_resolved_anchor", " ".join(anchor.split()))

    @property
    def name(self) -> str:
        return self.targets[0]

    @property
    def resolved_anchor(self) -> str:
        return self._resolved_anchor

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        """The templates of stages 1 to 3: the group's own, else its kind's."""
        return self.templates or TEMPLATES[self.kind]

    @property
    def image_templates(self) -> tuple[str, ...]:
        """The prompts of the stage-2 training images, used in turn."""
        return self.templates or (TRAINING_IMAGE_PROMPT[self.kind],)

    @property
    def defaults(self) -> KindDefaults:
        return KIND_DEFAULTS[self.kind]

    @classmethod
    def parse(cls, text: str, kind: str = "object", anchor: str | None = None) -> ConceptGroup:
        """One group from the shorthand "nudity, naked, nude" (commas separate synonyms)."""
        return cls(
            tuple(part for part in (p.strip() for p in text.split(",")) if part) or ("",),
            kind,
            anchor,
        )

    def to_dict(self) -> dict:
        record = {"targets": list(self.targets), "kind": self.kind, "anchor": self.resolved_anchor}
        if self.templates:
            record["templates"] = list(self.templates)
        return record


def check_weight(name: str, value: float, *, allow_zero: bool = True) -> float:
    """A non-negative, finite weight; raises with the option's name otherwise."""
    if not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
        raise ErasureInputError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ErasureInputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)
