"""Prompt sets from JSON, text files and CSV files; what a bad upload is told to change."""

from __future__ import annotations

import hashlib

from app.settings import get_settings
from tests.service.api_support import concept_body


def upload(api, content: bytes, filename: str, role: str = "operator", **form):
    files = {"file": (filename, content, "text/csv" if filename.endswith(".csv") else "text/plain")}
    return api.post("/prompt-sets", role=role, files=files, data=form)


def test_json_prompt_set_round_trip(api):
    body = {"name": "scenes", "prompts": ["a lake  at dawn", "a forest"], "purpose": "evaluation"}
    created = api.post("/prompt-sets", json=body)
    assert created.status_code == 201, created.text
    data = created.json()
    assert (data["count"], data["purpose"]) == (2, "evaluation")
    assert data["sha256"] == hashlib.sha256(b"a lake at dawn\na forest").hexdigest()
    read = api.get(f"/prompt-sets/{data['id']}").json()
    assert read["prompts"] == ["a lake at dawn", "a forest"]
    listed = api.get("/prompt-sets").json()
    assert data["id"] in {s["id"]: s for s in listed["data"]}
    assert {s["id"]: s["count"] for s in listed["data"]}[data["id"]] == 2
    assert api.get("/prompt-sets/nope").status_code == 404


def test_text_file_one_prompt_per_line(api):
    text = "\ufeffa red car\r\n\r\n  a quiet street  \nthe sea, at night\n".encode()
    response = upload(api, text, "prompts.txt")
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["prompts"] == ["a red car", "a quiet street", "the sea, at night"]
    assert (data["name"], data["purpose"], data["count"]) == ("prompts.txt", "preservation", 3)


def test_csv_file_uses_the_prompt_column(api):
    csv_text = b'id,Prompt,score\n1,"a cat, sleeping",0.5\n2,,0.1\n3,a dog,0.2\n'
    response = upload(api, csv_text, "eval.csv", name="pets", purpose="evaluation")
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["prompts"] == ["a cat, sleeping", "a dog"]
    assert (data["name"], data["purpose"]) == ("pets", "evaluation")


def test_bad_uploads_say_what_to_change(api, monkeypatch):
    cases = [
        (b"text,score\nhello,1\n", "x.csv", "column named 'prompt'"),
        (b"\n \n", "empty.txt", "no prompts"),
        (b"prompt\n", "header-only.csv", "no prompts"),
        (b"\xff\xfe\x00a", "bin.txt", "not UTF-8"),
    ]
    for content, name, message in cases:
        response = upload(api, content, name)
        assert response.status_code == 422, (name, response.text)
        error = response.json()["detail"][0]
        assert error["loc"] == ["body", "file"] and message in error["msg"], error
    monkeypatch.setenv("MACE_MAX_PROMPTS_PER_SET", "2")
    monkeypatch.setenv("MACE_MAX_TEXT_LENGTH", "10")
    get_settings.cache_clear()
    too_many = upload(api, b"a\nb\nc\n", "three.txt")
    assert "at most 2 prompts" in too_many.json()["detail"][0]["msg"]
    too_long = upload(api, b"short\nmuch too long a prompt\n", "long.txt")
    assert "line 2" in too_long.json()["detail"][0]["msg"]
    missing_file = api.post("/prompt-sets", data={"name": "x"}, files={"other": ("a", b"a")})
    assert missing_file.json()["detail"][0]["loc"] == ["body", "file"]


def test_bad_json_sets_name_the_field(api):
    for body, loc in [
        ({"name": "x", "prompts": []}, ["body", "prompts"]),
        ({"name": "x", "prompts": ["ok", ""]}, ["body", "prompts", 1]),
        ({"name": "", "prompts": ["ok"]}, ["body", "name"]),
        ({"name": "x", "prompts": ["ok"], "purpose": "training"}, ["body", "purpose"]),
    ]:
        response = api.post("/prompt-sets", json=body)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == loc
    garbled = api.post("/prompt-sets", content=b"{", headers={"Content-Type": "application/json"})
    assert garbled.status_code == 422


def test_viewers_cannot_upload_and_sets_feed_erasures(api):
    assert upload(api, b"a\n", "a.txt", role="viewer").status_code == 403
    prompt_set = upload(api, b"a city\na meadow\n", "keep.txt").json()
    base = api.base_model()
    body = concept_body(base.name, preservation_prompt_set=prompt_set["id"])
    job = api.post("/erasures", json=body)
    assert job.status_code == 202
    assert job.json()["request"]["preservation_prompt_set"] == prompt_set["id"]
