"""The comparison grid's pixel layout."""

from __future__ import annotations

from PIL import Image

from worker.evaluation.image_grid import GAP, HEADER_HEIGHT, LABEL_WIDTH, comparison_grid

COLOURS = {
    ("a", 0): (255, 0, 0),
    ("a", 1): (0, 0, 255),
    ("b", 0): (0, 255, 0),
    ("b", 1): (255, 255, 0),
}


def test_cells_sit_where_the_layout_says():
    cell = 40
    rows = [
        (label, [Image.new("RGB", (8, 8), COLOURS[(label, c)]) for c in range(2)])
        for label in ("a", "b")
    ]
    grid = comparison_grid(rows, ["base", "erased"], cell=cell)
    assert grid.size == (LABEL_WIDTH + 2 * (cell + GAP), HEADER_HEIGHT + 2 * (cell + GAP))
    for r, label in enumerate(("a", "b")):
        for c in range(2):
            left = LABEL_WIDTH + c * (cell + GAP)
            top = HEADER_HEIGHT + r * (cell + GAP)
            for x, y in ((left, top), (left + cell - 1, top + cell - 1)):
                assert grid.getpixel((x, y)) == COLOURS[(label, c)]
            assert grid.getpixel((left + cell, top)) == (255, 255, 255)  # the gap
    header = grid.crop((LABEL_WIDTH, 0, grid.width, HEADER_HEIGHT))
    labels = grid.crop((0, HEADER_HEIGHT, LABEL_WIDTH, grid.height))
    assert header.getextrema() != ((255, 255),) * 3  # column labels drawn
    assert labels.getextrema() != ((255, 255),) * 3  # prompt labels drawn
