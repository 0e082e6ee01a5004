"""`POST /generate`: limits, model resolution, the payload a worker receives, broker outages."""

from __future__ import annotations

import base64
import io
import socket
import time

import pytest
from celery.contrib.testing.worker import start_worker
from PIL import Image

from app.queue import get_celery
from app.settings import get_settings
from app.storage import StoredObject

BAD_REQUESTS = [
    ({"width": 100}, ["width"]),
    ({"height": 2048}, ["height"]),
    ({"width": 0}, ["width"]),
    ({"num_inference_steps": 0}, ["num_inference_steps"]),
    ({"num_inference_steps": 1000}, ["num_inference_steps"]),
    ({"num_images": 9}, ["num_images"]),
    ({"num_images": 0}, ["num_images"]),
    ({"guidance_scale": -1}, ["guidance_scale"]),
    ({"seed": -5}, ["seed"]),
    ({"prompt": ""}, ["prompt"]),
    ({"prompt": "x" * 301}, ["prompt"]),
    ({"model_id": "abc"}, []),  # both a model and a base model
    ({"base_model": None}, []),  # neither
]


@pytest.mark.parametrize(("change", "loc"), BAD_REQUESTS, ids=[str(c) for c, _ in BAD_REQUESTS])
def test_generate_limits(api, change, loc):
    body = {"base_model": "sd", "prompt": "a cat", **change}
    response = api.post("/generate", json=body)
    assert response.status_code == 422, response.text
    assert ["body", *loc] in [error["loc"] for error in response.json()["detail"]]


def test_unknown_models_are_404_and_unfinished_ones_409(api):
    assert api.post("/generate", json={"base_model": "nope", "prompt": "x"}).status_code == 404
    assert api.post("/generate", json={"model_id": "0" * 32, "prompt": "x"}).status_code == 404
    base = api.base_model()
    running = api.erased_model(base, status="running")
    response = api.post("/generate", json={"model_id": running.id, "prompt": "x"})
    assert response.status_code == 409 and "still being erased" in response.json()["detail"]
    queued = api.post("/erasures", json={"base_model": base.name, "concepts": ["cat"]}).json()
    by_job = api.post("/generate", json={"model_id": queued["id"], "prompt": "x"})
    assert by_job.status_code == 409


def test_broker_down_is_503(api, monkeypatch):
    base = api.base_model()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MACE_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    get_settings.cache_clear()
    get_celery.cache_clear()
    started = time.monotonic()
    response = api.post("/generate", json={"base_model": base.name, "prompt": "x"})
    assert response.status_code == 503 and "broker" in response.json()["detail"]
    assert time.monotonic() - started < 5


def png_base64(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def fake_generate_worker(api):
    """A Celery worker thread running a stand-in `mace.generate` that records its payloads."""
    received = []
    celery = get_celery()
    # Finalizing brings in shared tasks, such as the real worker's when another test module
    # imported it; the stand-in replaces it on this app.
    celery.finalize()
    celery.tasks.pop("mace.generate", None)

    @celery.task(name="mace.generate", shared=False)
    def generate(**payload):
        received.append(payload)
        if payload["prompt"] == "explode":
            raise ValueError("prompt refused by the engine")
        colors = [(i * 40, 0, 0) for i in range(payload["num_images"])]
        return {"images": [png_base64(c) for c in colors], "seconds": 0.01}

    with start_worker(celery, pool="solo", queues=["generate"], perform_ping_check=False):
        yield received


def test_generate_sends_the_payload_and_returns_png(api, fake_generate_worker):
    base = api.base_model()
    model = api.erased_model(base)
    key = f"models/{model.id}/edit.safetensors"
    uri = f"s3://{get_settings().STORAGE_URL.removeprefix('s3://')}/{key}"
    api.add_artifact(model.id, "edit", StoredObject(key, uri, 10, "cd" * 32))

    body = {"model_id": model.id, "prompt": "a cat", "seed": 3, "width": 64, "height": 64}
    one = api.post("/generate", json=body)
    assert one.status_code == 200, one.text
    assert one.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(one.content)).size == (8, 8)
    payload = fake_generate_worker[-1]
    assert payload["base"] == {"name": base.name, "source": base.source, "sha256": base.sha256}
    assert payload["edit"] == {"key": key, "sha256": "cd" * 32}
    assert (payload["seed"], payload["width"], payload["num_images"]) == (3, 64, 1)
    assert payload["negative_prompt"] is None and payload["num_inference_steps"] == 25

    several = api.post("/generate", json={"base_model": base.name, "prompt": "x", "num_images": 3})
    assert several.status_code == 200 and len(several.json()["images"]) == 3
    assert fake_generate_worker[-1]["edit"] is None

    refused = api.post("/generate", json={"base_model": base.name, "prompt": "explode"})
    assert refused.status_code == 422 and "refused" in refused.json()["detail"]

    metrics = api.get("/metrics").text
    count = next(
        line for line in metrics.splitlines() if line.startswith("mace_generate_seconds_count")
    )
    assert float(count.split()[-1]) >= 2  # the two that produced images
