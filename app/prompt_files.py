"""Prompts from an uploaded file: text (one prompt per line) or CSV (a `prompt` column)."""

from __future__ import annotations

import csv
import io

from app.errors import InvalidField
from app.schemas.text import clean_text
from app.settings import get_settings

LOC = ["body", "file"]
CSV_TYPES = ("text/csv", "application/csv", "application/vnd.ms-excel")


def prompts_from_file(data: bytes, *, filename: str, content_type: str | None) -> list[str]:
    """The prompts of an uploaded file; raises InvalidField saying what to change.

    Args:
        data: the file's bytes (UTF-8).
        filename: its name; `.csv` means CSV.
        content_type: its declared type; `text/csv` means CSV too.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidField(LOC, f"the file is not UTF-8 text ({exc.reason})") from exc
    is_csv = filename.lower().endswith(".csv") or (content_type or "").split(";")[0] in CSV_TYPES
    rows = _csv_rows(text) if is_csv else _text_rows(text)
    prompts = []
    for line, value in rows:
        if not value.strip():
            continue  # blank lines and empty cells are skipped, not errors
        try:
            prompts.append(clean_text(value))
        except ValueError as exc:
            raise InvalidField(LOC, f"line {line}: the prompt {exc}") from exc
    limit = get_settings().MAX_PROMPTS_PER_SET
    if not prompts:
        where = "in its 'prompt' column" if is_csv else "(one prompt per line)"
        raise InvalidField(LOC, f"the file has no prompts {where}")
    if len(prompts) > limit:
        raise InvalidField(LOC, f"at most {limit} prompts per set; the file has {len(prompts)}")
    return prompts


def _text_rows(text: str) -> list[tuple[int, str]]:
    return list(enumerate(text.splitlines(), start=1))


def _csv_rows(text: str) -> list[tuple[int, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    if "prompt" not in columns:
        found = ", ".join(repr(c) for c in columns if c) or "no header row"
        raise InvalidField(
            LOC, f"a CSV needs a header row with a column named 'prompt' (found: {found})"
        )
    try:
        return [(reader.line_num, row.get(columns["prompt"]) or "") for row in reader]
    except csv.Error as exc:
        raise InvalidField(LOC, f"line {reader.line_num}: unreadable CSV ({exc})") from exc
