"""Text fields users send: whitespace collapsed, no control characters, bounded length.

Limits come from the settings at validation time, so they follow MACE_* without a restart of
the import machinery (and tests can lower them).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field

from app.settings import get_settings

NAME_LENGTH = 200  # the catalog's name columns


def clean_text(value: str, *, allow_empty: bool = False, max_length: int | None = None) -> str:
    """`value` with runs of whitespace collapsed; raises ValueError saying what to change."""
    if any(unicodedata.category(c) == "Cc" for c in value if not c.isspace()):
        raise ValueError("must not contain control characters")
    text = " ".join(value.split())
    if not text and not allow_empty:
        raise ValueError("must not be empty")
    limit = get_settings().MAX_TEXT_LENGTH
    if max_length is not None:
        limit = min(limit, max_length)
    if len(text) > limit:
        raise ValueError(f"must be at most {limit} characters, got {len(text)}")
    return text


def _phrase(value: str) -> str:
    return clean_text(value)


def _optional_phrase(value: str) -> str:
    return clean_text(value, allow_empty=True)


def _name(value: str) -> str:
    return clean_text(value, max_length=NAME_LENGTH)


Phrase = Annotated[str, AfterValidator(_phrase)]
"""Non-empty text of at most MAX_TEXT_LENGTH characters."""
OptionalPhrase = Annotated[str, AfterValidator(_optional_phrase)]
"""Like `Phrase`, but may be empty (an object's anchor is "")."""
Name = Annotated[str, AfterValidator(_name)]
"""A name stored in a catalog column: non-empty, at most 200 characters."""
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
"""A catalog id."""
