"""The worker's pieces without services: request parsing, progress mapping, the pipeline cache,
storage retries and artifact kinds."""

from __future__ import annotations

import pytest
import torch

from app.storage import StorageError
from worker import storage_retry
from worker.erasure.base_model import ModelIdentity
from worker.erasure.errors import ErasureInputError
from worker.job_lease import JobLease
from worker.job_request import parse_request, recorded_options
from worker.model_records import artifact_kind
from worker.pipeline_cache import PipelineCache

API_REQUEST = {  # as app.schemas.erasures.ErasureCreate.normalised() stores it
    "base_model": "sd",
    "concepts": [{"targets": ["van gogh"], "kind": "style", "anchor": None}],
    "stages": ["cfr", "lora", "fusion"],
    "options": {"cfr_lambda": None, "lora_rank": 2, "lora_steps": None, "mask_provider": "full"},
    "preservation_prompt_set": "ps1",
    "seed": 7,
    "name": "no van gogh",
    "tags": ["art"],
}


def test_request_becomes_engine_inputs_with_kind_defaults():
    request = parse_request(API_REQUEST, prompt_set=lambda id_: {"ps1": ["a dog", "a house"]}[id_])
    [group] = request.groups
    assert group.targets == ("van gogh",) and group.resolved_anchor == "art"
    options = request.options
    assert (options.lora_rank, options.seed, options.mask_provider) == (2, 7, "full")
    assert options.preservation_prompts == ("a dog", "a house") and options.cfr_lambda is None
    recorded = recorded_options(request)
    assert recorded["cfr_lambda"] == 0.0 and recorded["preservation_weight"] == 1.0  # style
    assert recorded["preservation_prompt_set"] == "ps1" and "preservation_prompts" not in recorded
    assert (request.name, request.tags) == ("no van gogh", ["art"])
    assert options.lora_suppress_end_tokens is True and recorded["lora_suppress_end_tokens"]
    phrase_only = {**API_REQUEST["options"], "lora_suppress_end_tokens": False}
    request = parse_request({**API_REQUEST, "options": phrase_only}, prompt_set=lambda _: [])
    assert request.options.lora_suppress_end_tokens is False
    assert options.preservation_tokens == "all" and recorded["preservation_tokens"] == "all"
    words = {**API_REQUEST["options"], "preservation_tokens": "words"}
    request = parse_request({**API_REQUEST, "options": words}, prompt_set=lambda _: [])
    assert request.options.preservation_tokens == "words"


def test_request_templates_reach_the_group():
    concepts = [{"targets": ["star", "pentagram"], "anchor": "", "templates": ["a red {}"]}]
    request = parse_request({**API_REQUEST, "concepts": concepts}, prompt_set=lambda _: [])
    [group] = request.groups
    assert group.templates == ("a red {}",) and group.image_templates == ("a red {}",)
    assert group.targets == ("star", "pentagram") and group.resolved_anchor == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"options": {"lora_rnak": 1}}, "unknown option(s) lora_rnak"),
        ({"options": {"lora_suppress_end_tokens": "no"}}, "must be true or false"),
        ({"options": {"preservation_tokens": "padding"}}, "must be one of all, words"),
        ({"options": {"training_precision": "fp8"}}, "training_precision must be one of"),
        ({"options": {"concepts_per_pass": 0}}, "concepts_per_pass must be a whole number"),
        ({"stages": ["fusion"]}, "the fusion stage fuses LoRAs"),
        ({"concepts": [{"targets": [], "kind": "object"}]}, "at least one non-empty target"),
        ({"concepts": []}, None),  # refused by the engine's validate_request, not here
    ],
)
def test_request_errors_say_what_to_change(change, message):
    request = {**API_REQUEST, "preservation_prompt_set": None, **change}
    if message is None:
        assert parse_request(request, prompt_set=dict).groups == []
        return
    with pytest.raises(ErasureInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_request(request, prompt_set=dict)


def test_progress_names_the_running_stage_and_only_grows(monkeypatch):
    lease = JobLease("job", "me", stages=("cfr", "lora", "fusion"), lease_s=90)
    writes = []
    monkeypatch.setattr(lease, "_write", lambda **values: writes.append(values))
    for stage, fraction in [
        ("load", 0.0),
        ("load", 1.0),
        ("preservation", 1.0),
        ("cfr", 0.5),
        ("cfr", 1.0),
        ("cfr", 1.0),
        ("lora", 0.5),
        ("lora", 1.0),
        ("fusion", 1.0),
        ("upload", 0.5),
    ]:
        lease.progress(stage, fraction)
    stages = [w["stage"] for w in writes]
    assert stages[:4] == ["load", "preservation", "cfr", "cfr"]
    assert "lora" in stages and stages[-1] == "upload"
    progress = [w["progress"] for w in writes]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(0.95)
    assert set(writes[-1]["stage_timings"]) >= {"load", "cfr", "lora", "fusion", "upload"}


def test_progress_without_cfr_rescales_the_other_stages(monkeypatch):
    lease = JobLease("job", "me", stages=("lora", "fusion"), lease_s=90)
    writes = []
    monkeypatch.setattr(lease, "_write", lambda **values: writes.append(values))
    lease.progress("preservation", 1.0)  # lora begins: 0.1 of the 0.9 that remain weighted
    assert writes[-1]["stage"] == "lora" and writes[-1]["progress"] == pytest.approx(0.1 / 0.9)


class FakePipe:
    """A pipeline with one cross-attention layer, all the cache touches."""

    def __init__(self, source):
        self.source, self.unet = source, torch.nn.Module()
        self.unet.block = torch.nn.Module()
        self.unet.block.attn2 = torch.nn.Module()
        self.unet.block.attn2.to_k = torch.nn.Linear(2, 2)
        self.unet.block.attn2.to_v = torch.nn.Linear(2, 2)


def test_pipeline_cache_keeps_the_most_recent_and_checks_identity():
    loads = []

    def load(source):
        loads.append(source)
        return FakePipe(source)

    cache = PipelineCache(2, load=load, identify=lambda source: ModelIdentity(source, source * 2))
    for source in ["a", "b", "a", "c", "a", "b"]:
        with cache.use(source, source * 2) as pipe:
            assert pipe.source == source
    assert loads == ["a", "b", "c", "b"] and len(cache) == 2
    with (
        pytest.raises(ErasureInputError, match="changed since it was registered"),
        cache.use("d", "not its hash"),
    ):
        pass


def test_storage_retries_back_off_then_give_up(monkeypatch):
    sleeps, notes, calls = [], [], []
    monkeypatch.setattr(storage_retry.time, "sleep", sleeps.append)

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise StorageError("bucket unreachable")
        return "stored"

    assert (
        storage_retry.with_storage_retries(
            flaky, what="upload of x", attempts=5, backoff_s=2, on_retry=notes.append
        )
        == "stored"
    )
    assert sleeps == [2, 4] and "attempt 1/5 failed (bucket unreachable)" in notes[0]

    def down():
        raise StorageError("bucket unreachable")

    with pytest.raises(StorageError, match="upload of x: gave up after 3 attempts"):
        storage_retry.with_storage_retries(down, what="upload of x", attempts=3, backoff_s=1)


def test_artifact_kinds_of_an_erasure_folder():
    assert artifact_kind("edit.safetensors") == "edit"
    assert artifact_kind("manifest.json") == "manifest"
    assert artifact_kind("loras/012-van-gogh/pytorch_lora_weights.safetensors") == "lora-012"
    assert artifact_kind("loras/readme.txt") is None
