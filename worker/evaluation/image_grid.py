"""The same prompts and seeds through each model, side by side in one labelled PNG.

Rows are prompts (target prompts first, then retained ones), columns are models in the order
given (base | erased). Cell (row r, column c) starts at
(LABEL_WIDTH + c * (cell + GAP), HEADER_HEIGHT + r * (cell + GAP)).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw

from .metric_base import MetricContext

LABEL_WIDTH = 200
HEADER_HEIGHT = 24
GAP = 4
DEFAULT_CELL = 256


def comparison_grid(
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    column_labels: Sequence[str],
    cell: int = DEFAULT_CELL,
) -> Image.Image:
    """A white canvas with one labelled row per (label, images) and one column per model.

    Args:
        rows: per row, its label and one image per column.
        column_labels: the column headers, e.g. ("base", "erased").
        cell: side of each image cell in pixels (images are resized to it; small models'
            images are enlarged without smoothing so their pixels stay visible).
    """
    columns = len(column_labels)
    width = LABEL_WIDTH + columns * (cell + GAP)
    height = HEADER_HEIGHT + len(rows) * (cell + GAP)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(column_labels):
        draw.text((LABEL_WIDTH + c * (cell + GAP) + 4, 6), str(label), fill="black")
    for r, (label, images) in enumerate(rows):
        top = HEADER_HEIGHT + r * (cell + GAP)
        lines = textwrap.wrap(label, 30)[: max(1, cell // 14)]
        draw.multiline_text((4, top + 4), "\n".join(lines), fill="black", spacing=2)
        for c, image in enumerate(images[:columns]):
            smooth = image.width >= cell
            resized = image.convert("RGB").resize(
                (cell, cell), Image.BICUBIC if smooth else Image.NEAREST
            )
            canvas.paste(resized, (LABEL_WIDTH + c * (cell + GAP), top))
    return canvas


class ImageGridMetric:
    """Config: target_prompts, retained_prompts (lists, set names or files), cell_size."""

    name = "image_grid"

    def __init__(self, config: dict, context: MetricContext):
        self.targets = context.prompts(config, "target_prompts")
        has_retained = config.get("retained_prompts") or config.get("retained_prompts_path")
        self.retained = context.prompts(config, "retained_prompts") if has_retained else []
        self.cell = int(config.get("cell_size", DEFAULT_CELL))

    def prompt_groups(self) -> dict:
        return {"targets": self.targets, "retained": self.retained}

    def compose(self, images_by_label: dict[str, dict]) -> Image.Image:
        """The grid from {label: {group: [[images of prompt]]}}; first image of each prompt."""
        labels = list(images_by_label)
        rows = []
        for group, tag in (("targets", "target"), ("retained", "retained")):
            records = self.targets if group == "targets" else self.retained
            for i, record in enumerate(records):
                row = [images_by_label[label][group][i][0] for label in labels]
                rows.append((f"[{tag}] {record.text}", row))
        return comparison_grid(rows, labels, self.cell)

    def describe(self) -> dict:
        return {
            "target_prompts": [p.to_dict() for p in self.targets],
            "retained_prompts": [p.to_dict() for p in self.retained],
            "cell_size": self.cell,
        }
