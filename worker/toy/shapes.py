"""The toy world's objects: flat icon silhouettes drawn as coverage masks.

Each shape draws itself in unit coordinates ([-1, 1] on both axes, y pointing down) with 255 for
ink and 0 for holes; `shape_mask` places it on the canvas and anti-aliases it by drawing at four
times the resolution and averaging down.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4


class UnitPen:
    """Draws polygons and ellipses given in unit coordinates onto a high-resolution mask."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float):
        self.draw, self.cx, self.cy, self.radius = draw, cx, cy, radius

    def _xy(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.radius, self.cy + y * self.radius

    def polygon(self, points, ink: int = 255) -> None:
        self.draw.polygon([self._xy(x, y) for x, y in points], fill=ink)

    def ellipse(self, x0, y0, x1, y1, ink: int = 255) -> None:
        self.draw.ellipse([*self._xy(x0, y0), *self._xy(x1, y1)], fill=ink)

    def circle(self, x, y, r, ink: int = 255) -> None:
        self.ellipse(x - r, y - r, x + r, y + r, ink)

    def rect(self, x0, y0, x1, y1, ink: int = 255) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], ink)

    def pieslice(self, x0, y0, x1, y1, start, end, ink: int = 255) -> None:
        self.draw.pieslice([*self._xy(x0, y0), *self._xy(x1, y1)], start, end, fill=ink)


def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2):
    return [
        (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points: int, outer: float, inner: float):
    corners = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        angle = -math.pi / 2 + math.pi * k / points
        corners.append((r * math.cos(angle), r * math.sin(angle) + 0.08))
    return corners


def _circle(p: UnitPen):
    p.circle(0, 0, 0.95)


def _square(p: UnitPen):
    p.rect(-0.8, -0.8, 0.8, 0.8)


def _triangle(p: UnitPen):
    p.polygon([(0, -1), (1, 0.8), (-1, 0.8)])


def _star_shape(p: UnitPen):
    p.polygon(_star(5, 1.05, 0.45))


def _heart(p: UnitPen):
    p.circle(-0.45, -0.35, 0.52)
    p.circle(0.45, -0.35, 0.52)
    p.polygon([(-0.94, -0.2), (0.94, -0.2), (0, 0.95)])


def _moon(p: UnitPen):
    p.circle(0, 0, 0.95)
    p.circle(0.45, -0.25, 0.8, ink=0)


def _arrow(p: UnitPen):
    p.polygon([(-1, -0.3), (0.1, -0.3), (0.1, -0.8), (1, 0), (0.1, 0.8), (0.1, 0.3), (-1, 0.3)])


def _cross(p: UnitPen):
    p.rect(-0.32, -1, 0.32, 1)
    p.rect(-1, -0.32, 1, 0.32)


def _diamond(p: UnitPen):
    p.polygon([(0, -1), (0.72, 0), (0, 1), (-0.72, 0)])


def _hexagon(p: UnitPen):
    p.polygon(_regular(6, 0.98, 0.0))


def _ring(p: UnitPen):
    p.circle(0, 0, 0.95)
    p.circle(0, 0, 0.45, ink=0)


def _house(p: UnitPen):
    p.polygon([(-1, -0.05), (0, -1), (1, -0.05)])
    p.rect(-0.72, -0.1, 0.72, 0.95)
    p.rect(-0.2, 0.4, 0.2, 0.95, ink=0)


def _tree(p: UnitPen):
    p.polygon([(0, -1), (0.6, -0.15), (-0.6, -0.15)])
    p.polygon([(0, -0.6), (0.9, 0.5), (-0.9, 0.5)])
    p.rect(-0.2, 0.45, 0.2, 1)


def _lightning(p: UnitPen):
    p.polygon(
        [
            (-0.05, -1),
            (0.85, -1),
            (0.35, -0.2),
            (0.85, -0.2),
            (-0.45, 1),
            (-0.1, 0.15),
            (-0.75, 0.15),
        ]
    )


def _droplet(p: UnitPen):
    p.circle(0, 0.33, 0.62)
    p.polygon([(0, -1), (0.58, 0.12), (-0.58, 0.12)])


def _cloud(p: UnitPen):
    p.circle(-0.52, 0.2, 0.42)
    p.circle(0.05, -0.12, 0.6)
    p.circle(0.55, 0.22, 0.42)
    p.rect(-0.52, 0.2, 0.55, 0.62)


def _flower(p: UnitPen):
    for x, y in _regular(5, 0.57):
        p.circle(x, y, 0.42)
    p.circle(0, 0, 0.22, ink=0)


def _sun(p: UnitPen):
    p.circle(0, 0, 0.52)
    for k in range(8):
        a = 2 * math.pi * k / 8
        tip = (math.cos(a), math.sin(a))
        side = (-math.sin(a) * 0.2, math.cos(a) * 0.2)
        base = (0.6 * math.cos(a), 0.6 * math.sin(a))
        p.polygon(
            [(base[0] + side[0], base[1] + side[1]), tip, (base[0] - side[0], base[1] - side[1])]
        )


def _smiley(p: UnitPen):
    p.circle(0, 0, 0.95)
    p.circle(-0.35, -0.3, 0.17, ink=0)
    p.circle(0.35, -0.3, 0.17, ink=0)
    p.pieslice(-0.55, -0.2, 0.55, 0.65, 0, 180, ink=0)


def _mushroom(p: UnitPen):
    p.pieslice(-1, -0.95, 1, 0.55, 180, 360)
    p.rect(-0.3, -0.25, 0.3, 0.95)


def _umbrella(p: UnitPen):
    p.pieslice(-1, -0.9, 1, 0.7, 180, 360)
    p.rect(-0.1, -0.15, 0.1, 0.85)
    p.rect(-0.45, 0.7, 0.1, 0.9)


def _cup(p: UnitPen):
    p.ellipse(0.1, -0.45, 0.98, 0.5)
    p.ellipse(0.35, -0.2, 0.74, 0.25, ink=0)
    p.rect(-0.85, -0.7, 0.45, 0.9)


def _fish(p: UnitPen):
    p.ellipse(-1, -0.55, 0.45, 0.55)
    p.polygon([(0.25, 0), (1, -0.65), (1, 0.65)])
    p.circle(-0.55, -0.12, 0.14, ink=0)


def _hourglass(p: UnitPen):
    p.rect(-0.8, -1, 0.8, -0.78)
    p.rect(-0.8, 0.78, 0.8, 1)
    p.polygon([(-0.7, -0.8), (0.7, -0.8), (0.1, 0), (0.7, 0.8), (-0.7, 0.8), (-0.1, 0)])


def _crown(p: UnitPen):
    p.polygon([(-1, 0.7), (-1, -0.65), (-0.5, 0.0), (0, -0.85), (0.5, 0.0), (1, -0.65), (1, 0.7)])


def _flag(p: UnitPen):
    p.rect(-0.9, -1, -0.68, 1)
    p.rect(-0.68, -0.95, 0.95, 0.2)


def _shield(p: UnitPen):
    p.polygon([(-0.85, -0.9), (0.85, -0.9), (0.85, 0.1), (0, 1), (-0.85, 0.1)])


def _gear(p: UnitPen):
    p.circle(0, 0, 0.72)
    for k in range(8):
        a = 2 * math.pi * k / 8
        c, s = math.cos(a), math.sin(a)
        half = 0.2
        p.polygon(
            [
                (c * 0.6 - s * half, s * 0.6 + c * half),
                (c * 1.0 - s * half, s + c * half),
                (c * 1.0 + s * half, s - c * half),
                (c * 0.6 + s * half, s * 0.6 - c * half),
            ]
        )
    p.circle(0, 0, 0.28, ink=0)


SHAPES: dict[str, Callable[[UnitPen], None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star_shape,
    "heart": _heart,
    "moon": _moon,
    "arrow": _arrow,
    "cross": _cross,
    "diamond": _diamond,
    "hexagon": _hexagon,
    "ring": _ring,
    "house": _house,
    "tree": _tree,
    "lightning": _lightning,
    "droplet": _droplet,
    "cloud": _cloud,
    "flower": _flower,
    "sun": _sun,
    "smiley": _smiley,
    "mushroom": _mushroom,
    "umbrella": _umbrella,
    "cup": _cup,
    "fish": _fish,
    "hourglass": _hourglass,
    "crown": _crown,
    "flag": _flag,
    "shield": _shield,
    "gear": _gear,
}


def shape_mask(name: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of shape `name` on a `size` x `size` canvas.

    Args:
        name: a key of `SHAPES`.
        size: canvas side in pixels.
        cx, cy: centre of the shape in pixels.
        radius: half the shape's extent in pixels.
    """
    hi = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    pen = UnitPen(ImageDraw.Draw(hi), cx * SUPERSAMPLE, cy * SUPERSAMPLE, radius * SUPERSAMPLE)
    SHAPES[name](pen)
    return _average_down(np.asarray(hi, dtype=np.float32) / 255.0)


def outline_mask(
    name: str, size: int, cx: float, cy: float, radius: float, width: float
) -> np.ndarray:
    """Coverage of a stroke `width` pixels wide along the inside of the shape's edges."""
    hi = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    pen = UnitPen(ImageDraw.Draw(hi), cx * SUPERSAMPLE, cy * SUPERSAMPLE, radius * SUPERSAMPLE)
    SHAPES[name](pen)
    from PIL import ImageFilter

    kernel = 2 * round(width * SUPERSAMPLE) + 1
    eroded = hi.filter(ImageFilter.MinFilter(kernel))
    stroke = np.asarray(hi, dtype=np.float32) - np.asarray(eroded, dtype=np.float32)
    return _average_down(stroke / 255.0)


def _average_down(hi: np.ndarray) -> np.ndarray:
    size = hi.shape[0] // SUPERSAMPLE
    return hi.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
