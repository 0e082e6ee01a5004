"""The worker on the production stack: Postgres, Redis, moto's S3 and a real Celery worker process
running erasure jobs on the toy model, image generation and exports."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select

from app.artifacts import object_key
from app.catalog import jobs
from app.catalog.models import Artifact, BaseModel
from app.queue import EXPORT_TASK, GENERATE_TASK
from tests.service.worker_support import WorkerProcess
from worker.erasure.base_model import load_pipeline
from worker.erasure.edit import CompactEdit, EditedUnet
from worker.erasure.generate import generate_images


@pytest.fixture(scope="module")
def worker(service_env, tmp_path_factory):
    process = WorkerProcess(service_env, tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def erased(catalog, base, worker):
    """A two-group job run to the end, with every state the row went through."""
    job_id = catalog.submit(base, [("star", "pentagram"), ("heart",)])
    seen = []
    job = catalog.wait_final(
        job_id, 120, watch=lambda j: seen.append((j.status, j.stage, j.progress))
    )
    assert job.status == "succeeded", job.error
    return job, seen


def artifacts_of(catalog, model_id) -> dict[str, Artifact]:
    with catalog.session() as db:
        found = db.scalars(select(Artifact).where(Artifact.model_id == model_id))
        return {artifact.kind: artifact for artifact in found}


def test_job_succeeds_with_verified_artifacts_and_lineage(catalog, bucket, base, erased):
    job, seen = erased
    assert job.progress == 1.0 and job.model_id == job.id and job.attempts == 1
    assert {"load", "preservation", "cfr", "lora", "fusion", "upload"} <= set(job.stage_timings)
    running = [progress for status, _, progress in seen if status == "running"]
    assert running == sorted(running) and max(running) < 1.0
    # CFR takes well under a poll interval on the tiny model; the long LoRA stage is always seen.
    assert "lora" in {stage for status, stage, _ in seen if status == "running"}

    [model] = catalog.models_of_job(job.id)
    assert model.id == job.id and model.base_model_id == base.id and model.parent_model_id is None
    assert [c["targets"] for c in model.concepts] == [["star", "pentagram"], ["heart"]]
    assert model.options["cfr_lambda"] == 100.0  # the object kind's default, resolved
    assert model.options["lora_steps"] == 3 and model.seed == 0 and model.tags == ["test"]

    artifacts = artifacts_of(catalog, job.id)
    assert set(artifacts) == {"edit", "manifest", "lora-000", "lora-001"}
    assert object_key(catalog.store, artifacts["edit"].uri) == f"models/{job.id}/edit.safetensors"
    for artifact in artifacts.values():
        key = object_key(catalog.store, artifact.uri)
        assert bucket.sha256(key) == artifact.sha256
        assert bucket.head(key)["ContentLength"] == artifact.bytes
    manifest = json.loads(bucket.read(object_key(catalog.store, artifacts["manifest"].uri)))
    assert manifest["base_model"] == {"name": base.name, "sha256": base.sha256}
    assert manifest["files"]["edit.safetensors"]["sha256"] == artifacts["edit"].sha256


def _generate_here(pipe, settings: dict) -> list[np.ndarray]:
    images = generate_images(pipe, **settings)
    return [np.asarray(image, dtype=np.int16) for image in images]


def _png(encoded: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_generate_runs_the_erased_model_and_the_base(
    catalog, bucket, base, erased, toy_model_dir, tmp_path
):
    job, _ = erased
    edit = artifacts_of(catalog, job.id)["edit"]
    settings = {
        "prompt": "a red star on a white background",
        "negative_prompt": None,
        "seed": 3,
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "width": None,
        "height": None,
        "num_images": 2,
    }
    reference = {"name": base.name, "source": base.source, "sha256": base.sha256}
    sent = {
        "erased": {"key": f"models/{job.id}/edit.safetensors", "sha256": edit.sha256},
        "base": None,
    }
    results = {
        name: catalog.celery.send_task(
            GENERATE_TASK, kwargs={"base": reference, "edit": ref, **settings}
        ).get(timeout=120)
        for name, ref in sent.items()
    }
    images = {name: [_png(i) for i in result["images"]] for name, result in results.items()}
    assert all(len(found) == 2 and found[0].shape == (32, 32, 3) for found in images.values())
    assert all(result["seconds"] > 0 for result in results.values())

    # The same images come out of a pipeline built here: the worker applied exactly the edit.
    pipe = load_pipeline(str(toy_model_dir))
    path = tmp_path / "edit.safetensors"
    bucket.client.download_file(bucket.name, bucket.key(sent["erased"]["key"]), str(path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the worker; and 2 cores are shared with it
    try:
        local_base = _generate_here(pipe, settings)
        EditedUnet.of(pipe.unet).apply(CompactEdit.load(path))
        local_erased = _generate_here(pipe, settings)
    finally:
        torch.set_num_threads(threads)
    for name, local in (("base", local_base), ("erased", local_erased)):
        for ours, theirs in zip(images[name], local, strict=True):
            assert np.abs(ours - theirs).max() <= 1, name
    assert np.abs(images["erased"][0] - images["base"][0]).mean() > 1.0


def test_chained_erasure_downloads_its_parent(catalog, base, erased):
    parent, _ = erased
    job_id = catalog.submit(base, [("house",)], parent_model_id=parent.id)
    job = catalog.wait_final(job_id, 120)
    assert job.status == "succeeded", job.error
    [model] = catalog.models_of_job(job_id)
    assert model.parent_model_id == parent.id and model.base_model_id == base.id
    assert set(artifacts_of(catalog, job_id)) == {"edit", "manifest", "lora-000"}


def test_cancel_stops_a_running_job(catalog, base, worker):
    job_id = catalog.submit(base, [("fish",)], lora_steps=2000)
    catalog.wait(job_id, lambda j: j.status == "running" and j.stage == "lora", 60)
    with catalog.session() as db:
        jobs.request_cancel(db, job_id)
    job = catalog.wait_final(job_id, 15)
    assert job.status == "cancelled" and job.model_id is None
    assert catalog.models_of_job(job_id) == []


@pytest.mark.parametrize(
    ("options", "tamper", "message"),
    [
        ({"lora_rank": 0}, False, "lora_rank must be a whole number >= 1"),
        ({"no_such_option": 1}, False, "unknown option(s) no_such_option"),
        ({}, True, "changed since it was registered"),
    ],
)
def test_bad_input_fails_the_job_with_its_message(catalog, base, worker, options, tamper, message):
    target = base
    if tamper:  # the files at the source no longer hash to what the catalog recorded
        target = BaseModel(name=f"{base.name}-tampered", source=base.source, sha256="0" * 64)
        with catalog.session() as db:
            db.add(target)
            db.commit()
    job_id = catalog.submit(target, [("tree",)], **options)
    job = catalog.wait_final(job_id, 60)
    assert job.status == "failed" and message in job.error and job.attempts == 1
    assert catalog.models_of_job(job_id) == []


def test_export_is_stored_once(catalog, bucket, erased):
    job, _ = erased
    first = catalog.celery.send_task(EXPORT_TASK, args=[job.id, "lora"]).get(timeout=120)
    again = catalog.celery.send_task(EXPORT_TASK, args=[job.id, "lora"]).get(timeout=60)
    artifact = artifacts_of(catalog, job.id)["lora"]
    assert first["sha256"] == again["sha256"] == artifact.sha256
    assert first["report"]["rank"] >= 1 and "report" not in again
    key = object_key(catalog.store, artifact.uri)
    assert key == f"models/{job.id}/exports/lora.tar"  # a folder export (diffusers' LoRA folder)
    assert bucket.sha256(key) == artifact.sha256
    with tarfile.open(fileobj=io.BytesIO(bucket.read(key))) as tar:
        assert "lora/pytorch_lora_weights.safetensors" in tar.getnames()
