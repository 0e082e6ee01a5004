"""`mace serve` with only MACE_DATA_DIR: the API and its worker on SQLite, a local artifact folder
and the filesystem broker, driven over HTTP from submit to download, erasing a concept of the
toy model for real: its judge reads the images the service draws before and after."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from sqlalchemy.orm import sessionmaker

from app.catalog.api_keys import create_api_key
from app.catalog.base_models import register_base_model
from app.catalog.db import make_engine
from tests.service.conftest import free_port, wait_for_port
from tests.service.worker_support import ROOT, WORKER_ENV, settings_of
from worker.erasure.base_model import model_identity
from worker.toy.commands import SHIPPED_MODEL
from worker.toy.judge import JUDGE_FILE, load_judge
from worker.toy.prompts import concept_prompts, erasure_request, preservation_prompt_set
from worker.toy.scoring import judged_correct


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# A quick erasure that still removes the concept from the toy model (the demo and the toy
# benchmark use more images and the kind's default LoRA steps). Like them, it takes the toy
# world's request (`worker.toy.prompts.erasure_request`): its settings, anchors and captions
# without the concept as preservation prompts.
ERASURE_OPTIONS = {"images_per_concept": 4, "image_steps": 10, "lora_steps": 20}
RETAINED = ("heart", "house", "fish", "moon", "gear", "crown")


def _judged(client: httpx.Client, model: dict, prompts: list, judge) -> np.ndarray:
    """Whether the judge sees the asked-for object in each image drawn over HTTP."""
    images = []
    for seed, (prompt, _labels) in enumerate(prompts):
        body = {**model, "prompt": prompt, "seed": seed, "num_inference_steps": 25}
        response = client.post("/generate", json=body, timeout=120)
        assert response.status_code == 200, response.text
        images.append(np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")))
    return judged_correct(judge, np.stack(images), [labels for _, labels in prompts], "object")


def test_serve_erases_a_toy_concept_end_to_end(tmp_path, toy_model_dir):
    env = {**os.environ, **WORKER_ENV, "MACE_DATA_DIR": str(tmp_path / "data")}
    env = {k: v for k, v in env.items() if k not in ("MACE_DATABASE_URL", "MACE_BROKER_URL")}
    port = free_port()
    with open(tmp_path / "serve.log", "ab") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_for_port(port, timeout=90)  # migrated first, so the catalog is there
        engine = make_engine(settings_of(env).database_url)
        with sessionmaker(bind=engine)() as db:
            identity = model_identity(str(toy_model_dir))
            register_base_model(db, name="toy", source=str(toy_model_dir), sha256=identity.sha256)
            _, key = create_api_key(db, role="operator", name="serve test")
        engine.dispose()
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
        )
        prompt_set = client.post("/prompt-sets", json=preservation_prompt_set(["star"]))
        assert prompt_set.status_code == 201, prompt_set.text
        body = erasure_request("star", "toy", prompt_set.json()["id"], ERASURE_OPTIONS)
        submitted = client.post("/erasures", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 300
        while (job := client.get(f"/erasures/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job["status"] == "succeeded", job
        model = client.get(f"/models/{job['model_id']}").json()
        edit = next(a for a in model["artifacts"] if a["kind"] == "edit")
        download = client.get(f"/models/{job['model_id']}/artifacts/edit")
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == edit["sha256"]

        # The judge reads the images: stars are gone from the erased model, the others stay.
        judge = load_judge(SHIPPED_MODEL / JUDGE_FILE)
        stars = concept_prompts("star", 6, seed=5)
        others = [concept_prompts(name, 1, seed=[6, i])[0] for i, name in enumerate(RETAINED)]
        base, erased = {"base_model": "toy"}, {"model_id": job["model_id"]}
        stars_before, stars_after = (_judged(client, m, stars, judge) for m in (base, erased))
        others_before, others_after = (_judged(client, m, others, judge) for m in (base, erased))
        assert stars_before.sum() >= 5 and stars_after.sum() <= 1, (stars_before, stars_after)
        assert others_after.sum() >= others_before.sum() - 1, (others_before, others_after)
        client.close()
        workers = _children(serve.pid)
        assert workers, "mace serve started no worker"
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)
    assert all(_gone(pid) for pid in workers), "the worker outlived mace serve"
