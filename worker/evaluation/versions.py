"""Library versions an evaluation was computed with."""

from __future__ import annotations

from importlib import metadata

from worker.erasure.versions import library_versions

_EVALUATION_LIBRARIES = ("nudenet", "onnxruntime", "numpy", "scipy", "pillow")


def evaluation_versions() -> dict[str, str]:
    versions = library_versions()
    for name in _EVALUATION_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
