"""The CLIP BPE tokenizer of Stable Diffusion 1.x, built from the shipped vocabulary file."""

from __future__ import annotations

import gzip
import json
from functools import cache
from importlib import resources
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 48894  # 49408 entries - 256 bytes - 256 bytes with </w> - 2 special tokens
MAX_LENGTH = 77


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP use for raw bytes, in vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


@cache
def _merges() -> tuple[str, ...]:
    data = resources.files("worker.erasure") / "data" / BPE_FILE
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        lines = text.read().split("\n")
    return tuple(lines[1 : MERGE_COUNT + 1])


def write_clip_tokenizer(directory: str | Path) -> Path:
    """Write `vocab.json`, `merges.txt` and the tokenizer config of SD 1.x's CLIP tokenizer.

    Args:
        directory: folder to write into (created if missing); `CLIPTokenizer.from_pretrained`
            loads it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = _merges()
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return directory


def load_clip_tokenizer(directory: str | Path | None = None):
    """A `CLIPTokenizer` with SD 1.x's vocabulary; writes the files to `directory` if given."""
    import tempfile

    from transformers import CLIPTokenizer

    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="clip-tokenizer-"))
    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(directory)))
