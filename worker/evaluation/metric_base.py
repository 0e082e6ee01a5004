"""What every metric is given: its prompts resolved from its config; flattening image groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.erasure.errors import ErasureInputError

from .prompts import PromptRecord, resolve_prompts


@dataclass
class MetricContext:
    """The run's prompt sets, the default one, and whether configs may name local files."""

    prompt_sets: Mapping[str, Sequence[PromptRecord]] = field(default_factory=dict)
    default_set: str | None = None
    allow_paths: bool = True

    def prompts(self, config: Mapping, key: str, *, required: bool = False) -> list:
        """The prompts named by `config[key]` (or `<key>_path`), else the default set."""
        source = config.get(key, config.get(f"{key}_path"))
        if source is None:
            if required or self.default_set is None:
                raise ErasureInputError(f"give {key!r}: a list of prompts or a prompt set name")
            source = self.default_set
        records = resolve_prompts(source, self.prompt_sets, allow_paths=self.allow_paths, what=key)
        limit = config.get(f"{key}_limit", config.get("limit"))
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ErasureInputError(f"limit must be a whole number >= 1, got {limit!r}")
            records = records[:limit]
        return records


def flatten(per_prompt: Sequence[Sequence]) -> tuple[list, list[int]]:
    """All images in prompt order, and for each the index of the prompt it was drawn for."""
    images, owners = [], []
    for index, group in enumerate(per_prompt):
        images.extend(group)
        owners.extend([index] * len(group))
    return images, owners
