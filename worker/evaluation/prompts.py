"""Evaluation prompts: plain lists, text files (one a line) or CSVs in the I2P layout.

An I2P-layout CSV has a `prompt` column and optionally `categories`, `evaluation_seed` and
`evaluation_guidance`; a row's seed and guidance, when present, override the run's.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.erasure.errors import ErasureInputError

PROMPT_COLUMNS = ("prompt", "text", "caption")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt and what the file says about how to sample it (None: the run's setting)."""

    text: str
    seed: int | None = None
    guidance: float | None = None
    categories: tuple[str, ...] = field(default=(), compare=False)
    label: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        data = {"text": self.text}
        if self.seed is not None:
            data["seed"] = self.seed
        if self.guidance is not None:
            data["guidance"] = self.guidance
        if self.categories:
            data["categories"] = list(self.categories)
        if self.label is not None:
            data["label"] = self.label
        return data


def read_prompt_file(path: str | Path, *, limit: int | None = None) -> list[PromptRecord]:
    """Prompts from a .csv (I2P layout, or the first text column) or a text file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ErasureInputError(f"no prompt file at {path}")
    if path.suffix.lower() == ".csv":
        records = _read_csv(path)
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [PromptRecord(line.strip()) for line in lines if line.strip()]
    if not records:
        raise ErasureInputError(f"{path} holds no prompts")
    return records[:limit] if limit else records


def _read_csv(path: Path) -> list[PromptRecord]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        column = next((c for c in PROMPT_COLUMNS if c in columns), columns[0] if columns else None)
        if column is None:
            raise ErasureInputError(f"{path} has no header row; its first line must name columns")
        records = []
        for number, row in enumerate(reader, start=2):
            text = (row.get(column) or "").strip()
            if text:
                records.append(_record_from_row(row, text, path, number))
    return records


def _record_from_row(row: Mapping[str, str], text: str, path: Path, number: int) -> PromptRecord:
    def number_or_none(name, kind):
        value = (row.get(name) or "").strip()
        if not value:
            return None
        try:
            return kind(float(value)) if kind is int else kind(value)
        except ValueError as exc:
            raise ErasureInputError(f"{path}:{number}: {name} is not a number: {value!r}") from exc

    categories = tuple(c.strip() for c in (row.get("categories") or "").split(",") if c.strip())
    label = (row.get("label") or row.get("concept") or "").strip() or None
    return PromptRecord(
        text,
        seed=number_or_none("evaluation_seed", int),
        guidance=number_or_none("evaluation_guidance", float),
        categories=categories,
        label=label,
    )


def with_category(records: Sequence[PromptRecord], category: str) -> list[PromptRecord]:
    """The records tagged with `category` (I2P's `categories` column, case-insensitive)."""
    wanted = category.strip().lower()
    return [r for r in records if wanted in (c.lower() for c in r.categories)]


def resolve_prompts(
    source,
    prompt_sets: Mapping[str, Sequence[PromptRecord]],
    *,
    allow_paths: bool,
    what: str,
) -> list[PromptRecord]:
    """A metric's prompts from its config value.

    Args:
        source: a list of prompt strings, the name of one of `prompt_sets`, or a file path.
        prompt_sets: the prompt sets given to the run, by name.
        allow_paths: whether a path on this machine may be named (the CLI: yes; a service
            request: no).
        what: the config field, for error messages.
    """
    if isinstance(source, list | tuple):
        records = [s if isinstance(s, PromptRecord) else PromptRecord(str(s)) for s in source]
        records = [r for r in records if r.text.strip()]
        if not records:
            raise ErasureInputError(f"{what}: the prompt list is empty")
        return records
    if not isinstance(source, str) or not source:
        raise ErasureInputError(f"{what}: give a list of prompts or the name of a prompt set")
    if source in prompt_sets:
        return list(prompt_sets[source])
    if allow_paths:
        return read_prompt_file(source)
    known = ", ".join(sorted(prompt_sets)) or "none"
    raise ErasureInputError(f"{what}: no prompt set named {source!r} (known: {known})")
