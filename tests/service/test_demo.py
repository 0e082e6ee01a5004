"""`mace demo`'s choice of prompts and its refusal of concepts the toy world does not have."""

from __future__ import annotations

import argparse

import pytest

from app.demo import ROWS_PER_SIDE, _demo_prompts, run_demo


def test_demo_prompts_name_the_concept_by_each_word_then_other_concepts():
    rows = _demo_prompts("star")
    erased, retained = rows[:ROWS_PER_SIDE], rows[ROWS_PER_SIDE:]
    assert [flag for *_, flag in rows] == [True] * ROWS_PER_SIDE + [False] * ROWS_PER_SIDE
    assert all(labels.object == "star" for _, labels, _ in erased)
    assert any("pentagram" in p for p, *_ in erased) and any(" star" in p for p, *_ in erased)
    others = [labels.object for _, labels, _ in retained]
    assert "star" not in others and len(set(others)) == ROWS_PER_SIDE
    assert all(not {"star", "pentagram"} & set(p.replace(",", " ").split()) for p, *_ in retained)


def test_demo_refuses_a_concept_outside_the_toy_world(tmp_path):
    args = argparse.Namespace(out=str(tmp_path / "demo"), concept="cat")
    with pytest.raises(SystemExit, match="not in the toy world; use one of: circle"):
        run_demo(args)
