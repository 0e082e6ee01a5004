"""`/evaluations` on the API side: validation, resolution of the models, the queue message,
idempotency, cancel, and where the report and the metrics are read."""

from __future__ import annotations

from app.catalog.db import session_factory
from app.catalog.models import EvaluationJob, Metric
from tests.service.api_support import broker


def grid_body(*models: str, **overrides) -> dict:
    return {
        "models": list(models),
        "metrics": [{"name": "image_grid", "config": {"target_prompts": "targets"}}],
        "prompt_sets": {"targets": ["a photo of a cat"]},
        **overrides,
    }


def evaluation(job_id: str) -> EvaluationJob:
    with session_factory()() as db:
        return db.get(EvaluationJob, job_id)


def test_submit_resolves_models_and_queues_a_message(api):
    base = api.base_model()
    erased = api.erased_model(base)
    broker().delete("evaluate")
    response = api.post("/evaluations", json=grid_body(erased.id))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/evaluations/{job['id']}"
    assert (job["status"], job["dispatched"]) == ("queued", True)
    # The base is added for comparison, first; models are stored by catalog id.
    assert job["request"]["models"] == [
        {"label": base.name, "kind": "base", "id": base.id},
        {"label": erased.id, "kind": "erased", "id": erased.id},
    ]
    assert job["id"].encode() in b"".join(broker().lrange("evaluate", 0, -1))
    listed = api.get("/evaluations", params={"status": "queued"}).json()
    assert job["id"] in [j["id"] for j in listed["data"]]
    assert api.get(f"/evaluations/{job['id']}").json()["status"] == "queued"


def test_without_comparison_only_the_named_models(api):
    base = api.base_model()
    erased = api.erased_model(base)
    body = grid_body(erased.id, compare_with_base=False)
    job = api.post("/evaluations", json=body).json()
    assert [m["kind"] for m in job["request"]["models"]] == ["erased"]


def test_bad_requests_say_what_to_change(api):
    base = api.base_model()
    other = api.base_model()
    erased = api.erased_model(base)
    running = api.erased_model(base, status="running")
    cases = [
        (grid_body("no-such-model"), 422, "no base model named 'no-such-model'"),
        (grid_body(erased.id, other.name), 422, "one base model"),
        (grid_body(running.job_id), 409, "still being erased"),
        (
            grid_body(erased.id, prompt_sets={"targets": "0" * 32}),
            422,
            "upload one with POST /prompt-sets",
        ),
        (
            grid_body(erased.id, metrics=[{"name": "fid", "config": {"reference_dir": "/etc"}}]),
            422,
            "would name a file on the server",
        ),
        (grid_body(erased.id, metrics=[{"name": "tifa"}]), 422, "image_grid"),
        (grid_body(erased.id, metrics=[]), 422, "at least 1"),
        (grid_body(erased.id, sampler={"num_inference_steps": 0}), 422, "greater than or equal"),
    ]
    for body, status, message in cases:
        response = api.post("/evaluations", json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.text, (body, response.text)


def test_idempotency_key_replays_or_conflicts(api):
    base = api.base_model()
    erased = api.erased_model(base)
    headers = {"Idempotency-Key": "eval-1"}
    first = api.post("/evaluations", json=grid_body(erased.id), headers=headers)
    again = api.post("/evaluations", json=grid_body(erased.id), headers=headers)
    other = api.post("/evaluations", json=grid_body(erased.id, seed=5), headers=headers)
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 409)
    assert first.json()["id"] == again.json()["id"]


def test_cancel_and_report_before_success(api):
    base = api.base_model()
    job = api.post("/evaluations", json=grid_body(base.name)).json()
    assert api.get(f"/evaluations/{job['id']}/report").status_code == 409
    cancelled = api.post(f"/evaluations/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert evaluation(job["id"]).status == "cancelled"
    assert api.post(f"/evaluations/{job['id']}/cancel").status_code == 409
    assert api.get("/evaluations/nope").status_code == 404


def test_viewer_cannot_submit(api):
    base = api.base_model()
    assert api.post("/evaluations", role="viewer", json=grid_body(base.name)).status_code == 403


def test_model_metrics_lists_what_evaluations_recorded(api):
    base = api.base_model()
    erased = api.erased_model(base)
    with session_factory()() as db:
        db.add(Metric(model_id=erased.id, name="nudenet", value=0.25, evaluation_id="e1"))
        db.commit()
    found = api.get(f"/models/{erased.id}/metrics").json()
    assert found["count"] == 1
    assert (found["data"][0]["name"], found["data"][0]["value"]) == ("nudenet", 0.25)
    assert found["data"][0]["evaluation_id"] == "e1"
    assert api.get("/models/unknown/metrics").status_code == 404


def experiment_body(model_id: str, **metric_config) -> dict:
    return {
        "output_dir": "results/mace_asr",
        "technique": {
            "name": "mace",
            "config": {"model_id": model_id, "erase_concept": "nudity", "lambda_cfr": 0.1},
        },
        "metric": {"name": "asr_i2p", "config": {"limit": 5, **metric_config}},
    }


def test_experiment_is_queued_as_an_evaluation(api):
    base = api.base_model()
    broker().delete("evaluate")
    response = api.post("/experiments", json=experiment_body(base.name))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/evaluations/{job['id']}"
    assert job["request"]["base_model_id"] == base.id
    assert job["request"]["experiment"]["technique"]["config"]["erase_concept"] == "nudity"
    assert job["id"].encode() in b"".join(broker().lrange("evaluate", 0, -1))


def test_experiment_refuses_server_paths_and_unknown_models(api):
    base = api.base_model()
    erased_elsewhere = api.erased_model(api.base_model())
    cases = [
        (experiment_body("CompVis/stable-diffusion-v1-4"), "mace base-models add"),
        (experiment_body(base.name, prompts_path="/etc/passwd"), "would name a file"),
        (experiment_body(base.name, prompt_set="f" * 32), "no prompt set"),
        ({**experiment_body(base.name), "metrics": [{"name": "fid"}]}, "either 'metric'"),
    ]
    body = experiment_body(base.name)
    body["technique"]["config"]["load_path"] = "/models/erased.pt"
    cases.append((body, "id of a catalogued erased model"))
    body = experiment_body(base.name)
    body["technique"]["config"]["load_path"] = erased_elsewhere.id
    cases.append((body, "another base model"))
    for body, message in cases:
        response = api.post("/experiments", json=body)
        assert response.status_code == 422, (body, response.text)
        assert message in response.text, (body, response.text)
