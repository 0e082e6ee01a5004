"""Preservation statistics P: computed once per (base model, prompt set) and cached on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .base_model import ModelIdentity
from .encoding import PromptEncoder
from .errors import ErasureInputError
from .options import check_preservation_tokens
from .statistics import SecondMoment, prompt_second_moment

DEFAULT_PROMPT_SET = "captions"


def default_preservation_prompts() -> list[str]:
    """The shipped set of ordinary captions."""
    text = (resources.files("worker.erasure") / "data" / "preservation_captions.txt").read_text()
    return clean_prompts(text.splitlines())


def clean_prompts(prompts: Sequence[str]) -> list[str]:
    """Folded white space, blanks and duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for prompt in prompts:
        folded = " ".join(str(prompt).split())
        if folded:
            seen.setdefault(folded)
    return list(seen)


def cache_dir() -> Path:
    return Path(os.environ.get("MACE_CACHE_DIR", Path.home() / ".cache" / "mace"))


def prompt_set_digest(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def preservation_statistics(
    encoder: PromptEncoder,
    identity: ModelIdentity,
    prompts: Sequence[str],
    *,
    tokens: str = "all",
    cache: Path | None = None,
) -> SecondMoment:
    """P = sum e^p e^p^T with its token count, from the cache when this model and set were seen.

    Args:
        encoder: the base model's prompt encoder.
        identity: the base model's identity; its hash keys the cache.
        prompts: the preservation prompts.
        tokens: which positions of each prompt count (see `prompt_second_moment`).
        cache: folder of cached statistics (default `$MACE_CACHE_DIR` or ~/.cache/mace).
    """
    prompts = clean_prompts(prompts)
    if not prompts:
        raise ErasureInputError("the preservation prompt set is empty")
    check_preservation_tokens(tokens)
    key = f"{identity.sha256[:16]}-{prompt_set_digest(prompts)[:16]}"
    if tokens != "all":  # "all" keeps the key it had before the choice existed
        key += f"-{tokens}"
    path = (cache or cache_dir()) / "preservation" / f"{key}.safetensors"
    if path.is_file():
        stored = load_file(path)
        return SecondMoment(stored["total"], int(stored["count"].item()))
    moment = prompt_second_moment(encoder, prompts, tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"total": moment.total, "count": torch.tensor(moment.count)}, partial)
    partial.replace(path)  # atomic: concurrent workers never read a half-written file
    return moment
