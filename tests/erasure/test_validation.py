"""Bad input gets a clear error and writes nothing."""

from __future__ import annotations

import math

import pytest

from app.cli import main
from worker.erasure.concepts import ConceptGroup
from worker.erasure.errors import ErasureInputError
from worker.erasure.options import ErasureOptions

LONG_PHRASE = " ".join(["antidisestablishmentarianism"] * 20)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concept", " , "], "at least one non-empty target"),
        (["--concept", LONG_PHRASE], "shorten it"),
        (["--concept", "cat", "--cfr-lambda", "-1"], "cfr_lambda must be >= 0"),
        (["--concept", "cat", "--cfr-lambda", "nan"], "cfr_lambda must be a finite number"),
        (["--concept", "cat", "--preservation-weight", "inf"], "finite number"),
        (["--concept", "cat", "--lora-rank", "0"], "lora_rank must be a whole number >= 1"),
        (["--concept", "cat", "--stages", "fusion"], "add the lora stage"),
        (["--concept", "cat", "--stages", "cfr,sharpen"], "subset of cfr,lora,fusion"),
        (["--concept", "cat", "--mask-provider", "magic"], "unknown mask provider"),
        (
            [
                "--concept",
                "cat",
                "--concept",
                "dog",
                "--kind",
                "style",
                "--kind",
                "object",
                "--kind",
                "person",
            ],
            "once per --concept",
        ),
    ],
)
def test_bad_erase_input_is_refused_and_writes_nothing(
    tiny_model_dir, tmp_path, capsys, args, message
):
    out = tmp_path / "out"
    code = main(["erase", "--model", str(tiny_model_dir), "--out", str(out), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_model_is_named_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["erase", "--model", "nobody/no-such-model", "--concept", "cat", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "nobody/no-such-model" in err and "local Hugging Face cache" in err
    assert not out.exists()


def test_unknown_kind_is_refused_by_the_engine():
    with pytest.raises(ErasureInputError, match="unknown kind 'landscape'"):
        ConceptGroup(("alps",), "landscape")


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf])
def test_fusion_lambda_must_be_finite_and_non_negative(value):
    with pytest.raises(ErasureInputError, match="fusion_lambda"):
        ErasureOptions(fusion_lambda=value).validate()


def test_defaults_follow_the_concept_kind():
    groups = [ConceptGroup(("van gogh",), "style")]
    resolved = ErasureOptions().resolve(groups)
    assert resolved.cfr_lambda == 0.0 and resolved.preservation_weight == 1.0
    assert resolved.lora_learning_rate_for(groups[0]) == 1e-4
    assert ErasureOptions().lora_steps_for(ConceptGroup(("nudity",), "explicit")) == 120
    assert groups[0].resolved_anchor == "art"
    mixed = ErasureOptions().resolve([ConceptGroup(("cat",)), groups[0]])
    assert mixed.cfr_lambda == 100.0 and mixed.preservation_weight == 1.0
