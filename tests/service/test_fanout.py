"""Stage 2 shared out among worker processes (`worker.stage2_fanout`): two real Celery workers
with chunks of two groups train one six-group job together, to the edit one engine run gives;
a cancel stops every chunk; a helper killed mid-chunk costs only its chunk's missing groups; and
one embedded worker (SQLite, filesystem broker) runs a fanned-out job alone."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from app.catalog import jobs
from app.catalog.models import ErasureChunk
from app.serve import migrate
from app.settings import get_settings
from tests.service.test_faults import artifacts_verified, poll
from tests.service.worker_support import Catalog, WorkerProcess
from worker.erasure.base_model import ModelIdentity, load_pipeline
from worker.erasure.edit import CompactEdit
from worker.erasure.erase import erase
from worker.job_request import parse_request
from worker.lora_checkpoints import checkpoint_key

CHUNKED = {"MACE_STAGE2_CHUNK_GROUPS": "2"}
SIX = [("star",), ("heart",), ("moon",), ("arrow",), ("house",), ("gear",)]


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fanout-workers")


@pytest.fixture(scope="module")
def workers(service_env, logs):
    pair = [WorkerProcess({**service_env, **CHUNKED}, logs / f"worker-{i}.log") for i in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(WorkerProcess.start, pair))
    yield pair
    for process in pair:
        process.stop()


def chunks_of(catalog, job_id: str) -> list[ErasureChunk]:
    with catalog.session() as db:
        found = select(ErasureChunk).where(ErasureChunk.job_id == job_id)
        return list(db.scalars(found.order_by(ErasureChunk.number)))


def pid(worker_name: str | None) -> int | None:
    return int(worker_name.split(":")[1]) if worker_name else None


def stored_edit(bucket, job_id: str, folder: Path) -> CompactEdit:
    key = bucket.key(f"models/{job_id}/edit.safetensors")
    bucket.client.download_file(bucket.name, key, str(folder / "edit.safetensors"))
    return CompactEdit.load(folder)


def assert_same_change(ours: CompactEdit, reference: CompactEdit, unet) -> None:
    """Every edited matrix changes the base weights alike: W* - W0 within float rounding of
    LoRAs trained in other batches (~1e-5 relative), against the change's own scale."""
    assert sorted(ours.matrix_names) == sorted(reference.matrix_names)
    for name in reference.matrix_names:
        base = unet.get_submodule(name).weight.detach().double()
        expected = reference.edited_weight(name, base) - base
        found = ours.edited_weight(name, base) - base
        scale = expected.abs().max()
        torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4 * scale, msg=name)


def one_engine_run(job, base, toy_model_dir):
    """The same request through `erase` in this process (one run, no chunks, no service);
    returns the pipeline and the edit."""
    request = parse_request(job.request, prompt_set=dict)
    pipe = load_pipeline(str(toy_model_dir))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the workers
    try:
        result = erase(
            pipe,
            ModelIdentity(name=base.name, sha256=base.sha256),
            request.groups,
            request.options,
        )
    finally:
        torch.set_num_threads(threads)
    return pipe, result.edit


def test_two_workers_train_one_job_to_the_one_run_edit(
    catalog, bucket, base, workers, toy_model_dir, tmp_path, service_env, monkeypatch
):
    job_id = catalog.submit(base, SIX, lora_steps=8)
    seen = []
    job = catalog.wait_final(job_id, 180, watch=lambda j: seen.append((j.status, j.progress)))
    assert job.status == "succeeded", job.error
    assert job.attempts == 1 and len(catalog.models_of_job(job_id)) == 1
    assert artifacts_verified(catalog, bucket, job_id)
    assert job.stage_timings["lora"] > 0
    running = [progress for status, progress in seen if status == "running"]
    assert running == sorted(running) and max(running) < 1.0

    chunks = chunks_of(catalog, job_id)
    assert [c.groups for c in chunks] == [[0, 1], [2, 3], [4, 5]]
    assert all(c.status == "done" and c.attempts == 1 for c in chunks)
    # Both processes trained chunks: the job's own worker and the helper.
    assert {pid(c.worker) for c in chunks} == {w.process.pid for w in workers}
    assert pid(job.worker) in {w.process.pid for w in workers}
    # The chunks' checkpoints are gone: the model's lora-NNN artifacts hold them.
    assert all(bucket.head(checkpoint_key(job_id, g)) is None for g in range(6))

    # The workers' cached preservation statistics: the same P, not computed once more.
    monkeypatch.setenv("MACE_CACHE_DIR", service_env["MACE_CACHE_DIR"])
    pipe, reference = one_engine_run(job, base, toy_model_dir)
    assert_same_change(stored_edit(bucket, job_id, tmp_path), reference, pipe.unet)


def test_cancel_stops_every_chunk(catalog, base, workers):
    job_id = catalog.submit(base, SIX, lora_steps=2000, concepts_per_pass=1)

    def both_training():
        held = {pid(c.worker) for c in chunks_of(catalog, job_id) if c.status == "running"}
        return len(held) == 2

    poll(both_training, 90, "the two workers never trained chunks at once")
    with catalog.session() as db:
        jobs.request_cancel(db, job_id)
    job = catalog.wait_final(job_id, 20)
    assert job.status == "cancelled" and job.model_id is None
    assert catalog.models_of_job(job_id) == []
    # The helper stopped too and gave its chunk back; nothing was finished.
    poll(
        lambda: all(c.status == "pending" for c in chunks_of(catalog, job_id)),
        20,
        f"chunks still held: {[(c.number, c.status) for c in chunks_of(catalog, job_id)]}",
    )
    helper = next(w for w in workers if w.process.pid != pid(job.worker))
    assert re.search(rf"job {job_id}: chunk \d stopped on", helper.log())


def test_killed_helper_costs_only_its_chunks_missing_groups(catalog, bucket, base, workers):
    job_id = catalog.submit(base, SIX, lora_steps=20, concepts_per_pass=1)

    def helper_mid_chunk():
        owner = pid(catalog.job(job_id).worker)
        for chunk in chunks_of(catalog, job_id):
            if chunk.status == "running" and owner and pid(chunk.worker) != owner:
                stored = [g for g in chunk.groups if bucket.head(checkpoint_key(job_id, g))]
                if len(stored) == 1:
                    return chunk, stored
        return None

    killed, stored = poll(helper_mid_chunk, 120, "no helper chunk with one group stored")
    victim = next(w for w in workers if w.process.pid == pid(killed.worker))
    victim.kill()
    done_before = {c.number for c in chunks_of(catalog, job_id) if c.status == "done"}

    job = catalog.wait_final(job_id, 150)
    assert job.status == "succeeded", job.error
    assert len(catalog.models_of_job(job_id)) == 1
    assert artifacts_verified(catalog, bucket, job_id)
    [survivor] = [w for w in workers if w is not victim]
    assert pid(job.worker) == survivor.process.pid and job.attempts == 1

    chunks = {c.number: c for c in chunks_of(catalog, job_id)}
    assert all(c.status == "done" for c in chunks.values())
    assert chunks[killed.number].attempts == 2 and pid(chunks[killed.number].worker) == (
        survivor.process.pid
    )
    assert all(chunks[n].attempts == 1 for n in done_before)
    # Every group trained once: finished chunks not again, the killed chunk only its missing one.
    logs = victim.log() + survivor.log()
    for group in range(6):
        stores = logs.count(f"job {job_id}: stored the LoRA of group {group}\n")
        assert stores <= 1, f"group {group} stored {stores} times"
    assert f"job {job_id}: stored the LoRA of group {stored[0]}\n" not in survivor.log()
    assert f"job {job_id}: chunk {killed.number}: groups {stored} already stored" in (
        survivor.log()
    )
    assert logs.count(f"job {job_id}: succeeded") == 1


def test_one_embedded_worker_runs_a_fanned_out_job_alone(tmp_path, toy_model_dir, monkeypatch):
    env = {"MACE_DATA_DIR": str(tmp_path / "data"), "MACE_STAGE2_CHUNK_GROUPS": "1"}
    catalog = Catalog(env)
    assert catalog.settings.database_url.startswith("sqlite") and catalog.settings.embedded_broker
    monkeypatch.setenv("MACE_DATA_DIR", env["MACE_DATA_DIR"])
    get_settings.cache_clear()
    try:
        migrate()  # what `mace serve` does first
    finally:
        get_settings.cache_clear()
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        local = catalog.register_base(toy_model_dir)
        job_id = catalog.submit(local, SIX[:3])
        job = catalog.wait_final(job_id, 120)
        assert job.status == "succeeded", job.error
        assert job.progress == 1.0 and len(catalog.models_of_job(job_id)) == 1
        chunks = chunks_of(catalog, job_id)
        assert [c.groups for c in chunks] == [[0], [1], [2]]
        assert all(c.status == "done" and pid(c.worker) == worker.process.pid for c in chunks)

        # The invitations reach the same worker once the job has ended: nothing left to do.
        def invitations():
            found = re.findall(
                r"mace\.erase_chunk\[[^\]]+\] succeeded in [^:]+: (.*)", worker.log()
            )
            return found if len(found) == 2 else None

        assert (
            poll(invitations, 20, "the invitations were not consumed")
            == ["{'status': 'skipped'}"] * 2
        )
    finally:
        worker.stop()
        catalog.dispose()
