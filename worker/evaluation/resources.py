"""The models metrics use, loaded once per run and replaceable (tests inject tiny ones)."""

from __future__ import annotations

from collections.abc import Callable


class EvaluationResources:
    """Lazily loaded, cached CLIP models, NudeNet detector and FID feature extractor.

    Args:
        clip_loader: name or path -> `ClipModel` (default: `clip_models.load_clip`, offline).
        nudenet_loader: () -> detector with `detect(images)` and `source`.
        inception_loader: path or None -> extractor with `features(images)` and `source`
            (default: NVIDIA's TorchScript Inception from the path or $MACE_INCEPTION_PATH).
    """

    def __init__(
        self,
        *,
        clip_loader: Callable | None = None,
        nudenet_loader: Callable | None = None,
        inception_loader: Callable | None = None,
    ):
        self._clip_loader = clip_loader
        self._nudenet_loader = nudenet_loader
        self._inception_loader = inception_loader
        self._cache: dict = {}

    def _cached(self, key, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def clip(self, name: str):
        if self._clip_loader is None:
            from .clip_models import load_clip

            return self._cached(("clip", name), lambda: load_clip(name))
        return self._cached(("clip", name), lambda: self._clip_loader(name))

    def nudenet(self):
        if self._nudenet_loader is None:
            from .nudenet import NudeNetDetector

            return self._cached("nudenet", NudeNetDetector)
        return self._cached("nudenet", self._nudenet_loader)

    def inception(self, path: str | None):
        if self._inception_loader is None:
            from .inception import load_inception

            return self._cached(("inception", path), lambda: load_inception(path))
        return self._cached(("inception", path), lambda: self._inception_loader(path))

    def reference_features(self, extractor, paths):
        """Features of the reference images, computed once per extractor and file list."""
        from PIL import Image

        def compute():
            images = []
            for path in paths:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            return extractor.features(images)

        return self._cached(("reference", id(extractor), tuple(map(str, paths))), compute)
