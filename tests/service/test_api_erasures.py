"""Submitting, reading, listing and cancelling erasures, on Postgres and Redis."""

from __future__ import annotations

import json
import threading

from sqlalchemy import func, select, update

from app.catalog.db import session_factory
from app.catalog.models import ErasureJob
from app.schemas.erasures import request_sha256
from tests.service.api_support import broker, concept_body


def rows_with_key(idempotency_key: str) -> int:
    with session_factory()() as db:
        query = select(func.count()).where(
            ErasureJob.idempotency_key.endswith(f":{idempotency_key}")
        )
        return db.scalar(query)


def test_submit_queues_a_dispatched_job(api):
    base = api.base_model()
    broker().delete("erase")
    response = api.post("/erasures", json=concept_body(base.name, cfr_lambda=50, tags=["t"]))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/erasures/{job['id']}"
    assert (job["status"], job["progress"], job["base_model_id"]) == ("queued", 0.0, base.id)
    row = api.job(job["id"])
    assert row.status == "queued" and row.dispatched and row.parent_model_id is None
    # The message names the job, with the job's id as the task id.
    assert broker().llen("erase") == 1
    message = json.loads(broker().lindex("erase", 0))
    assert message["headers"]["id"] == job["id"]
    assert message["headers"]["task"] == "mace.erase"


def test_stored_request_is_normalised(api):
    base = api.base_model()
    body = concept_body(
        base.name,
        concepts=[
            "  cat ,kitten,, ",
            {"targets": ["van  gogh"], "kind": "style"},
            {"targets": ["star"], "anchor": "", "templates": ["a  red {}", "an icon of a {}"]},
        ],
        stages=["fusion", "lora"],
    )
    job = api.post("/erasures", json=body).json()
    request = api.job(job["id"]).request
    # `templates` is stored only when given, so older requests keep their sha256.
    assert request["concepts"] == [
        {"targets": ["cat", "kitten"], "kind": "object", "anchor": None},
        {"targets": ["van gogh"], "kind": "style", "anchor": None},
        {
            "targets": ["star"],
            "kind": "object",
            "anchor": "",
            "templates": ["a red {}", "an icon of a {}"],
        },
    ]
    assert request["stages"] == ["lora", "fusion"]
    options = request["options"]
    # Kind-dependent defaults stay None for the engine; fixed defaults are written out.
    assert options["cfr_lambda"] is None and options["lora_steps"] is None
    assert options["fusion_lambda"] == 0.1 and options["lora_rank"] == 1
    # Options added later are stored only when set away from their default, like `templates`.
    assert "lora_suppress_end_tokens" not in options and "preservation_tokens" not in options
    assert "training_precision" not in options
    assert (request["seed"], request["tags"], request["base_model"]) == (0, [], base.name)
    assert job["request_sha256"] == request_sha256(request)


def test_phrase_only_lora_loss_is_stored_for_the_engine(api):
    base = api.base_model()
    body = concept_body(base.name, lora_suppress_end_tokens=False)
    job = api.post("/erasures", json=body).json()
    assert api.job(job["id"]).request["options"]["lora_suppress_end_tokens"] is False


def test_preservation_over_the_captions_words_is_stored_for_the_engine(api):
    base = api.base_model()
    job = api.post("/erasures", json=concept_body(base.name, preservation_tokens="words")).json()
    assert api.job(job["id"]).request["options"]["preservation_tokens"] == "words"


def test_training_precision_is_stored_for_the_engine(api):
    base = api.base_model()
    job = api.post("/erasures", json=concept_body(base.name, training_precision="off")).json()
    assert api.job(job["id"]).request["options"]["training_precision"] == "off"


def test_read_and_404(api):
    base = api.base_model()
    job_id = api.post("/erasures", json=concept_body(base.name)).json()["id"]
    assert api.get(f"/erasures/{job_id}").json()["id"] == job_id
    missing = api.get("/erasures/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_list_paginates_and_filters(api):
    base = api.base_model()
    ids = [
        api.post("/erasures", json=concept_body(base.name, seed=i)).json()["id"] for i in range(3)
    ]
    page = api.get("/erasures", params={"limit": 2}).json()
    assert len(page["data"]) == 2 and page["count"] >= 3
    assert [j["id"] for j in page["data"]] == ids[::-1][:2]  # newest first
    second = api.get("/erasures", params={"limit": 2, "offset": 2}).json()
    assert second["data"][0]["id"] == ids[0] and second["count"] == page["count"]
    api.post(f"/erasures/{ids[1]}/cancel")
    cancelled = api.get("/erasures", params={"status": "cancelled", "limit": 200}).json()
    assert ids[1] in [j["id"] for j in cancelled["data"]]
    assert {j["status"] for j in cancelled["data"]} == {"cancelled"}
    assert api.get("/erasures", params={"status": "done"}).status_code == 422
    assert api.get("/erasures", params={"limit": 0}).status_code == 422


def test_cancel_queued_then_409(api):
    base = api.base_model()
    job_id = api.post("/erasures", json=concept_body(base.name)).json()["id"]
    response = api.post(f"/erasures/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert api.job(job_id).status == "cancelled"
    again = api.post(f"/erasures/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert api.post("/erasures/nope/cancel").status_code == 404


def test_cancel_running_asks_the_worker(api):
    base = api.base_model()
    job_id = api.post("/erasures", json=concept_body(base.name)).json()["id"]
    with session_factory()() as db:
        db.execute(update(ErasureJob).where(ErasureJob.id == job_id).values(status="running"))
        db.commit()
    response = api.post(f"/erasures/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] and response.json()["status"] == "running"


def test_idempotency_key_replays_and_conflicts(api):
    base = api.base_model()
    headers = {"Idempotency-Key": "order-17"}
    first = api.post("/erasures", json=concept_body(base.name), headers=headers)
    replay = api.post("/erasures", json=concept_body(base.name), headers=headers)
    assert first.status_code == 202 and replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["Location"] == first.headers["Location"]
    assert rows_with_key("order-17") == 1
    other = api.post("/erasures", json=concept_body(base.name, seed=1), headers=headers)
    assert other.status_code == 409 and "order-17" in other.json()["detail"]
    # Keys are scoped per API key: another client's same key is a new job.
    elsewhere = api.post("/erasures", json=concept_body(base.name), role="admin", headers=headers)
    assert elsewhere.status_code == 202 and elsewhere.json()["id"] != first.json()["id"]


def test_concurrent_submits_with_one_key_make_one_job(api):
    base = api.base_model()
    headers = {"Idempotency-Key": "burst-1"}
    api.key("operator")
    answers = []

    def submit():
        answers.append(api.post("/erasures", json=concept_body(base.name), headers=headers))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200] * 5 + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    assert rows_with_key("burst-1") == 1


def test_erasing_more_from_an_erased_model(api):
    base = api.base_model()
    parent = api.erased_model(base)
    response = api.post("/erasures", json=concept_body(parent.id))
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["base_model_id"], job["parent_model_id"]) == (base.id, parent.id)

    failed = api.erased_model(base, status="failed")
    refused = api.post("/erasures", json=concept_body(failed.id))
    assert refused.status_code == 409 and "failed" in refused.json()["detail"]


def test_unknown_references_name_the_field(api):
    unknown = api.post("/erasures", json=concept_body("no-such-model"))
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "base_model"]
    base = api.base_model()
    body = concept_body(base.name, preservation_prompt_set="0" * 32)
    missing = api.post("/erasures", json=body)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "preservation_prompt_set"]
