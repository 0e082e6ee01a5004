"""Rendered sets of toy-world scenes as arrays, drawn in parallel and reproducibly by seed."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from .world import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    OBJECTS,
    STYLE_NAMES,
    SceneLabels,
    random_labels,
    render,
)

CHUNK = 1000  # scenes per seeded chunk: the set is the same whatever the number of workers

# The label vocabularies, in the order of the judge's outputs.
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "object": OBJECTS,
    "style": STYLE_NAMES,
    "colour": tuple(COLOURS),
    "background": tuple(BACKGROUNDS),
}


@dataclass
class SceneSet:
    """`images` (N, H, W, 3) uint8 and one int64 index array per label kind."""

    images: np.ndarray
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.images)

    def scene(self, i: int) -> SceneLabels:
        return SceneLabels(**{k: LABEL_NAMES[k][int(v[i])] for k, v in self.labels.items()})


def _render_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, chunk, count = args
    rng = np.random.default_rng([seed, chunk])
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty((count, len(LABEL_NAMES)), np.int64)
    for i in range(count):
        scene = random_labels(rng)
        images[i] = np.asarray(render(scene, rng))
        labels[i] = [names.index(getattr(scene, kind)) for kind, names in LABEL_NAMES.items()]
    return images, labels


def render_scenes(count: int, seed: int, workers: int = 1) -> SceneSet:
    """`count` scenes with uniformly drawn labels; the result depends on `seed` only.

    Args:
        count: number of scenes.
        seed: seeds every draw.
        workers: processes to render with (rendering is pure Python and numpy).
    """
    jobs = [(seed, k, min(CHUNK, count - k * CHUNK)) for k in range((count + CHUNK - 1) // CHUNK)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_chunk, jobs))
    else:
        parts = [_render_chunk(job) for job in jobs]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return SceneSet(images, {k: labels[:, j] for j, k in enumerate(LABEL_NAMES)})
