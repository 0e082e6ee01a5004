"""The toy world's styles: how a shape is inked (fills, strokes, textures, effects).

Textured styles keep a stroke along the shape's edge so the silhouette stays legible under any
texture; periods of 5-6 pixels keep the textures distinct after a 2x-downsampling autoencoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .shapes import outline_mask, shape_mask

EDGE_WIDTH = 1.25  # pixels; the stroke that keeps textured silhouettes readable


@dataclass
class Sketch:
    """One shape placed on the canvas, with its colours; styles ink it."""

    shape: str
    size: int
    cx: float
    cy: float
    radius: float
    colour: np.ndarray  # RGB in [0, 1]
    background: np.ndarray
    rng: np.random.Generator

    def fill(self, scale: float = 1.0) -> np.ndarray:
        return shape_mask(self.shape, self.size, self.cx, self.cy, self.radius * scale)

    def edge(self, width: float = EDGE_WIDTH, scale: float = 1.0) -> np.ndarray:
        return outline_mask(self.shape, self.size, self.cx, self.cy, self.radius * scale, width)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = np.mgrid[0 : self.size, 0 : self.size]
        return ys, xs

    def textured(self, pattern: np.ndarray) -> np.ndarray:
        """Ink where the pattern is on inside the shape, plus the edge stroke."""
        return np.maximum(self.fill() * pattern, self.edge())

    def shadow_colour(self) -> np.ndarray:
        """A shade of the background: darker on light backgrounds, lighter on dark ones."""
        if self.background.mean() > 0.5:
            return self.background * 0.45
        return self.background + 0.45 * (1.0 - self.background)


def _over(base: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return base * (1.0 - alpha[..., None]) + colour * alpha[..., None]


def _plain(s: Sketch, ink: np.ndarray) -> np.ndarray:
    base = np.broadcast_to(s.background, (s.size, s.size, 3))
    return _over(base, s.colour, np.clip(ink, 0.0, 1.0))


def solid(s: Sketch) -> np.ndarray:
    return _plain(s, s.fill())


def outlined(s: Sketch) -> np.ndarray:
    return _plain(s, s.edge(width=1.75))


def dashed(s: Sketch) -> np.ndarray:
    ys, xs = s.grid()
    dashes = (((xs // 3) + (ys // 3)) % 2 == 0).astype(np.float32)
    return _plain(s, s.edge(width=1.75) * dashes)


def striped(s: Sketch) -> np.ndarray:
    ys, _ = s.grid()
    return _plain(s, s.textured(((ys % 6) < 3).astype(np.float32)))


def hatched(s: Sketch) -> np.ndarray:
    ys, xs = s.grid()
    return _plain(s, s.textured((((xs + ys) % 6) < 2).astype(np.float32)))


def checkered(s: Sketch) -> np.ndarray:
    ys, xs = s.grid()
    return _plain(s, s.textured((((xs // 4) + (ys // 4)) % 2 == 0).astype(np.float32)))


def dotted(s: Sketch) -> np.ndarray:
    ys, xs = s.grid()
    return _plain(s, s.textured(((xs % 5 < 2) & (ys % 5 < 2)).astype(np.float32)))


def gridded(s: Sketch) -> np.ndarray:
    ys, xs = s.grid()
    return _plain(s, s.textured(((xs % 5 == 0) | (ys % 5 == 0)).astype(np.float32)))


def zigzag(s: Sketch) -> np.ndarray:
    ys, xs = s.grid()
    tooth = np.abs((xs % 6) - 3)  # a triangle wave along x shifts each row up and down
    return _plain(s, s.textured((((ys + tooth) % 6) < 2).astype(np.float32)))


def speckled(s: Sketch) -> np.ndarray:
    noise = (s.rng.random((s.size, s.size)) < 0.45).astype(np.float32)
    return _plain(s, s.textured(noise))


def gradient(s: Sketch) -> np.ndarray:
    ys, _ = s.grid()
    top, bottom = s.cy - s.radius, s.cy + s.radius
    ramp = np.clip((ys + 0.5 - top) / (bottom - top), 0.0, 1.0)[..., None]
    # the colour fades into the background from top to bottom; the edge keeps the outline
    shade = s.colour * (1.0 - ramp) + s.background * ramp * 0.85 + s.colour * ramp * 0.15
    fill = s.fill()[..., None]
    image = s.background * (1.0 - fill) + shade * fill
    return _over(image, s.colour, s.edge())


def glowing(s: Sketch) -> np.ndarray:
    fill = s.fill()
    halo = Image.fromarray((fill * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2.5))
    halo = np.clip(np.asarray(halo, dtype=np.float32) / 255.0 * 1.6, 0.0, 0.8)
    return _over(_plain(s, halo), s.colour, fill)


def shadowed(s: Sketch) -> np.ndarray:
    shadow = shape_mask(s.shape, s.size, s.cx + 3, s.cy + 3, s.radius)
    base = _over(np.broadcast_to(s.background, (s.size, s.size, 3)), s.shadow_colour(), shadow)
    return _over(base, s.colour, s.fill())


def concentric(s: Sketch) -> np.ndarray:
    rings = [s.edge(width=1.5, scale=scale) for scale in (1.0, 0.62, 0.28)]
    return _plain(s, np.maximum.reduce(rings))


def stencil(s: Sketch) -> np.ndarray:
    ys, xs = s.grid()
    half = s.radius * 1.15
    tile = ((np.abs(xs + 0.5 - s.cx) < half) & (np.abs(ys + 0.5 - s.cy) < half)).astype(np.float32)
    return _plain(s, tile * (1.0 - s.fill(scale=0.92)))


STYLES: dict[str, Callable[[Sketch], np.ndarray]] = {
    "solid": solid,
    "outlined": outlined,
    "dashed": dashed,
    "striped": striped,
    "hatched": hatched,
    "checkered": checkered,
    "dotted": dotted,
    "gridded": gridded,
    "zigzag": zigzag,
    "speckled": speckled,
    "gradient": gradient,
    "glowing": glowing,
    "shadowed": shadowed,
    "concentric": concentric,
    "stencil": stencil,
}
