"""The renderer: deterministic by seed, and each label visibly changes the image."""

from __future__ import annotations

import numpy as np
import pytest

from worker.toy.world import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    OBJECTS,
    STYLE_NAMES,
    SceneLabels,
    contrasting,
    random_labels,
    render,
)


def _draw(labels: SceneLabels, seed: int = 0) -> np.ndarray:
    return np.asarray(render(labels, np.random.default_rng(seed)), dtype=np.int32)


def test_same_seed_same_image_other_seed_other_jitter():
    labels = SceneLabels("star", "speckled", "red", "white")
    assert np.array_equal(_draw(labels, 3), _draw(labels, 3))
    assert not np.array_equal(_draw(labels, 3), _draw(labels, 4))
    assert _draw(labels).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_world_has_enough_concepts_of_each_kind():
    assert len(OBJECTS) >= 26 and len(STYLE_NAMES) >= 14
    assert len(OBJECTS) + len(STYLE_NAMES) >= 40


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_every_object_looks_different_in_every_style(style):
    images = [_draw(SceneLabels(name, style, "blue", "white")) for name in OBJECTS]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            differing = np.abs(images[i] - images[j]).sum(axis=2) > 60
            assert differing.sum() >= 15, (style, OBJECTS[i], OBJECTS[j])


@pytest.mark.parametrize("name", ["circle", "heart", "gear", "lightning"])
def test_every_style_looks_different_on_an_object(name):
    images = [_draw(SceneLabels(name, style, "red", "white")) for style in STYLE_NAMES]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            differing = np.abs(images[i] - images[j]).sum(axis=2) > 60
            assert differing.sum() >= 10, (name, STYLE_NAMES[i], STYLE_NAMES[j])


def test_pixels_follow_the_labels():
    red, white, black = COLOURS["red"], BACKGROUNDS["white"], BACKGROUNDS["black"]
    solid = _draw(SceneLabels("circle", "solid", "red", "white"))
    centre, corner = solid[16, 16], solid[0, 0]
    assert np.abs(centre - red).max() <= 2 and np.abs(corner - white).max() <= 2
    # outlined and stencil leave the inside of the shape to the background
    hollow = _draw(SceneLabels("circle", "outlined", "red", "black"))
    assert np.abs(hollow[16, 16] - black).max() <= 2
    assert (np.abs(hollow - red).max(axis=2) <= 2).sum() >= 30  # the stroke itself is red
    cut = _draw(SceneLabels("square", "stencil", "red", "white"))
    assert np.abs(cut[16, 16] - white).max() <= 2
    assert (np.abs(cut - red).max(axis=2) <= 2).sum() >= 40
    # striped: rows inside the shape alternate between ink and background
    stripes = _draw(SceneLabels("square", "striped", "red", "white"))
    column = np.abs(stripes[8:24, 16] - red).max(axis=1) <= 2
    assert 5 <= column.sum() <= 11


def test_random_labels_keep_given_values_and_contrast():
    rng = np.random.default_rng(0)
    for _ in range(300):
        labels = random_labels(rng, style="dotted")
        assert labels.style == "dotted"
        assert contrasting(labels.colour, labels.background)
    assert not contrasting("yellow", "white")
    drawn = {random_labels(rng).object for _ in range(2000)}
    assert drawn == set(OBJECTS)
