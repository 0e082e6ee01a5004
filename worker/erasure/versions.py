"""Versions of the libraries a result was computed with, recorded in its metadata."""

from __future__ import annotations

from importlib import metadata

_LIBRARIES = ("mace-service", "torch", "diffusers", "transformers", "peft", "safetensors")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
