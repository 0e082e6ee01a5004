"""The toy-world benchmark's figures, on hand-made judge scores."""

import math

import pytest

from bench.toy_world import erasure_order, figures, harmonic_mean
from worker.toy.prompts import CONCEPTS
from worker.toy.scoring import ConceptScores


def _base() -> ConceptScores:
    per_concept = {c.name: 1.0 if c.kind == "object" else 0.5 for c in CONCEPTS}
    return ConceptScores(per_concept, {"star": 1.0, "heart": 0.5})


def test_figures_of_a_clean_erasure_of_one_object():
    base = _base()
    after = ConceptScores({**base.per_concept, "star": 0.0, "circle": 0.5}, {"star": 0.25})
    result = figures(after, base, ["star"])

    objects = [c.name for c in CONCEPTS if c.kind == "object" and c.name != "star"]
    styles = [c.name for c in CONCEPTS if c.kind == "style"]
    retained_base = (len(objects) + 0.5 * len(styles)) / (len(objects) + len(styles))
    assert result["efficacy"] == 1.0
    assert result["efficacy_base"] == 0.0
    assert result["generality"] == 0.75
    assert result["specificity_drop"] == pytest.approx(0.5 / (len(objects) + len(styles)), abs=1e-4)
    assert result["specificity_same_kind_drop"] == pytest.approx(0.5 / len(objects), abs=1e-4)
    assert result["specificity_base"] == pytest.approx(retained_base, abs=1e-4)
    parts = [1.0, result["specificity"], 0.75]
    assert result["H"] == pytest.approx(3 / sum(1 / p for p in parts), abs=1e-4)


def test_generality_is_left_out_when_no_erased_concept_has_synonyms():
    base = _base()
    result = figures(base, base, ["square"])  # "square" has a single surface form
    assert result["generality"] is None
    assert result["H"] == pytest.approx(harmonic_mean([0.0, result["specificity"]]))
    assert result["efficacy_base"] == 0.0


def test_harmonic_mean_is_zero_when_any_part_is():
    assert harmonic_mean([1.0, 0.0, 1.0]) == 0.0
    assert math.isclose(harmonic_mean([0.5, 1.0]), 2 / 3)


def test_erasure_order_puts_concepts_with_synonyms_first_and_is_seeded():
    order = erasure_order("object")
    with_synonyms = {c.name for c in CONCEPTS if c.has_synonyms}
    flags = [name in with_synonyms for name in order]
    assert flags == sorted(flags, reverse=True)
    assert sorted(order) == sorted(c.name for c in CONCEPTS if c.kind == "object")
    assert erasure_order("object") == order
    assert erasure_order("object", seed=1) != order
