"""The toy world: one icon per image, of an object, a style, a colour and a background.

Objects (`shapes.SHAPES`) and styles (`styles.STYLES`) are the concepts erasure is measured on;
colours and backgrounds are context. `render` draws a scene and returns its ground truth, so a
judge can be trained on it and generated images can be scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .shapes import SHAPES
from .styles import STYLES, Sketch

IMAGE_SIZE = 32

OBJECTS: tuple[str, ...] = tuple(SHAPES)
STYLE_NAMES: tuple[str, ...] = tuple(STYLES)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 135, 25),
    "yellow": (240, 210, 30),
    "green": (40, 165, 60),
    "blue": (40, 85, 225),
    "purple": (140, 55, 190),
    "pink": (245, 115, 180),
    "brown": (125, 75, 35),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (18, 18, 18),
    "gray": (175, 175, 175),
    "cream": (238, 226, 196),
    "navy": (22, 32, 82),
}

# Below this difference in luma (0-255) a colour does not stand out from a background; such
# pairs are never drawn.
MIN_CONTRAST = 50.0


@dataclass(frozen=True)
class SceneLabels:
    """The ground truth of one image."""

    object: str
    style: str
    colour: str
    background: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def contrasting(colour: str, background: str) -> bool:
    """Whether `colour` is drawn on `background` in this world."""
    return abs(_luma(COLOURS[colour]) - _luma(BACKGROUNDS[background])) >= MIN_CONTRAST


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def backgrounds_for(colour: str) -> tuple[str, ...]:
    return tuple(b for b in BACKGROUNDS if contrasting(colour, b))


def render(labels: SceneLabels, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw a scene: the object in the style and colour, on the background.

    Position and size are jittered a little (from `rng`) so no two images are identical.

    Args:
        labels: what to draw.
        rng: the source of the jitter (and of the speckled style's noise).
        size: image side in pixels.
    """
    jitter = size / 16
    sketch = Sketch(
        shape=labels.object,
        size=size,
        cx=size / 2 + rng.uniform(-jitter, jitter),
        cy=size / 2 + rng.uniform(-jitter, jitter),
        radius=size * rng.uniform(0.32, 0.38),
        colour=np.array(COLOURS[labels.colour], np.float32) / 255.0,
        background=np.array(BACKGROUNDS[labels.background], np.float32) / 255.0,
        rng=rng,
    )
    pixels = STYLES[labels.style](sketch)
    return Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))


def random_labels(
    rng: np.random.Generator,
    object: str | None = None,
    style: str | None = None,
    colour: str | None = None,
    background: str | None = None,
) -> SceneLabels:
    """Labels drawn uniformly, keeping the ones given; the background always contrasts."""
    object = object or OBJECTS[rng.integers(len(OBJECTS))]
    style = style or STYLE_NAMES[rng.integers(len(STYLE_NAMES))]
    if colour is None:
        choices = [c for c in COLOURS if background is None or contrasting(c, background)]
        colour = choices[rng.integers(len(choices))]
    if background is None:
        choices = backgrounds_for(colour)
        background = choices[rng.integers(len(choices))]
    return SceneLabels(object, style, colour, background)
