"""Every invalid erasure request is a 422 naming the field (413 for an oversized body)."""

from __future__ import annotations

import json

import pytest

from app.settings import get_settings
from tests.service.api_support import concept_body

BAD_VALUES = [
    ({"concepts": [""]}, ["concepts", 0, "targets", 0]),
    ({"concepts": [" , "]}, ["concepts", 0, "targets", 0]),
    ({"concepts": []}, ["concepts"]),
    ({"concepts": [{"targets": []}]}, ["concepts", 0, "targets"]),
    ({"concepts": [{"targets": "cat"}]}, ["concepts", 0, "targets"]),
    ({"concepts": [{"targets": ["cat"], "kind": "animal"}]}, ["concepts", 0, "kind"]),
    ({"concepts": [{"targets": ["cat", "Cat "]}]}, ["concepts", 0, "targets"]),
    ({"concepts": [{"targets": ["cat\x00"]}]}, ["concepts", 0, "targets", 0]),
    ({"concepts": [{"targets": ["cat"], "templates": []}]}, ["concepts", 0, "templates"]),
    ({"concepts": [{"targets": ["cat"], "templates": ["a cat"]}]}, ["concepts", 0, "templates"]),
    ({"concepts": [{"targets": ["cat"], "templates": ["{} {}"]}]}, ["concepts", 0, "templates"]),
    ({"concepts": [{"targets": ["cat"], "templates": "a {}"}]}, ["concepts", 0, "templates"]),
    (
        {"concepts": [{"targets": ["cat"], "templates": [f"a {{}} {i}" for i in range(65)]}]},
        ["concepts", 0, "templates"],
    ),
    ({"cfr_lambda": -1}, ["cfr_lambda"]),
    ({"preservation_weight": "heavy"}, ["preservation_weight"]),
    ({"lora_learning_rate": 0}, ["lora_learning_rate"]),
    ({"lora_rank": 0}, ["lora_rank"]),
    ({"lora_rank": True}, ["lora_rank"]),
    ({"lora_steps": 1.5}, ["lora_steps"]),
    ({"images_per_concept": -3}, ["images_per_concept"]),
    ({"image_steps": 10_000}, ["image_steps"]),
    ({"stages": ["fusion"]}, ["stages"]),
    ({"stages": ["cfr", "fusion"]}, ["stages"]),
    ({"stages": []}, ["stages"]),
    ({"stages": ["cfr", "cfr"]}, ["stages"]),
    ({"stages": ["prune"]}, ["stages", 0]),
    ({"mask_provider": "sam"}, ["mask_provider"]),
    ({"cfis": "yes"}, ["cfis"]),
    ({"lora_suppress_end_tokens": "no"}, ["lora_suppress_end_tokens"]),
    ({"preservation_tokens": "padding"}, ["preservation_tokens"]),
    ({"training_precision": "fp8"}, ["training_precision"]),
    ({"seed": -1}, ["seed"]),
    ({"seed": 2**40}, ["seed"]),
    ({"tags": [""]}, ["tags", 0]),
    ({"name": "x" * 201}, ["name"]),
    ({"cfr_lamda": 1}, ["cfr_lamda"]),
]


def detail_locs(response) -> list[list]:
    assert response.status_code == 422, response.text
    return [error["loc"][1:] for error in response.json()["detail"]]


@pytest.mark.parametrize(("change", "loc"), BAD_VALUES, ids=[str(c) for c, _ in BAD_VALUES])
def test_bad_value_is_422_naming_the_field(api, change, loc):
    base = api.base_model()
    response = api.post("/erasures", json=concept_body(base.name, **change))
    assert loc in detail_locs(response)
    assert response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["cfr_lambda", "fusion_lambda", "guidance_scale"])
def test_non_finite_numbers_are_refused(api, field, literal):
    base = api.base_model()
    body = json.dumps(concept_body(base.name)).rstrip("}") + f', "{field}": {literal}}}'
    response = api.post("/erasures", content=body, headers={"Content-Type": "application/json"})
    assert [field] in detail_locs(response)


def test_limits_come_from_settings(api, monkeypatch):
    monkeypatch.setenv("MACE_MAX_CONCEPT_GROUPS", "3")
    monkeypatch.setenv("MACE_MAX_TARGETS_PER_GROUP", "2")
    monkeypatch.setenv("MACE_MAX_TEXT_LENGTH", "20")
    get_settings.cache_clear()
    base = api.base_model()
    too_many = api.post("/erasures", json=concept_body(base.name, concepts=list("abcd")))
    assert ["concepts"] in detail_locs(too_many)
    assert "at most 3" in too_many.json()["detail"][0]["msg"]
    synonyms = api.post("/erasures", json=concept_body(base.name, concepts=["a, b, c"]))
    assert ["concepts", 0, "targets"] in detail_locs(synonyms)
    long = api.post("/erasures", json=concept_body(base.name, concepts=["x" * 21]))
    assert ["concepts", 0, "targets", 0] in detail_locs(long)
    assert "at most 20 characters" in long.json()["detail"][0]["msg"]
    fits = api.post("/erasures", json=concept_body(base.name, concepts=["a, b", "x" * 20, "c"]))
    assert fits.status_code == 202, fits.text


def test_body_over_the_limit_is_413(api_env, monkeypatch):
    monkeypatch.setenv("MACE_MAX_BODY_BYTES", "2000")
    get_settings.cache_clear()
    from tests.service.api_support import Api

    api = Api()  # the cap is read when the app is made
    base = api.base_model()
    big = concept_body(base.name, concepts=[f"concept {i}" for i in range(400)])
    response = api.post("/erasures", json=big)
    assert response.status_code == 413 and "MACE_MAX_BODY_BYTES" in response.json()["detail"]

    def chunks():  # no Content-Length: the cap counts the bytes as they arrive
        data = json.dumps(big).encode()
        for start in range(0, len(data), 500):
            yield data[start : start + 500]

    chunked = api.post("/erasures", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert api.post("/erasures", json=concept_body(base.name)).status_code == 202


def test_idempotency_key_must_be_printable(api):
    base = api.base_model()
    response = api.post(
        "/erasures", json=concept_body(base.name), headers={"Idempotency-Key": "k" * 161}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
