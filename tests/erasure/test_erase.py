"""The three stages end to end on the tiny model: output, rebuild, resume, cancel, chaining."""

from __future__ import annotations

import json

import pytest
import torch

from worker.erasure.artifacts import write_erasure
from worker.erasure.base_model import load_pipeline, model_identity
from worker.erasure.concepts import ConceptGroup
from worker.erasure.edit import CompactEdit, EditedUnet
from worker.erasure.erase import erase
from worker.erasure.errors import ErasureCancelled
from worker.erasure.generate import generate_images
from worker.erasure.layers import cross_attention_projections
from worker.erasure.options import ErasureOptions

GROUPS = [ConceptGroup(("cat", "kitten")), ConceptGroup(("van gogh",), "style")]
QUICK = ErasureOptions(images_per_concept=2, image_steps=3, lora_steps=3, lora_learning_rate=1e-3)


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir)), model_identity(str(tiny_model_dir))


@pytest.fixture(scope="module")
def erased(base):
    pipe, identity = base
    return erase(pipe, identity, GROUPS, QUICK)


def weights_of(pipe):
    return {n: m.weight.detach().clone() for n, m in cross_attention_projections(pipe.unet).items()}


def test_output_folder_has_edit_manifest_and_loadable_loras(base, erased, tmp_path, tiny_model_dir):
    out = write_erasure(erased, tmp_path / "erased")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"]["sha256"] == base[1].sha256
    assert [c["targets"] for c in manifest["concepts"]] == [["cat", "kitten"], ["van gogh"]]
    assert set(manifest["timings_s"]) >= {"cfr", "lora", "fusion"}
    assert manifest["options"]["cfr_lambda"] == 100.0 and manifest["seed"] == 0
    assert "torch" in manifest["versions"]
    lora_files = sorted(p for p in manifest["files"] if p.startswith("loras/"))
    assert len(lora_files) == 2 and "edit.safetensors" in manifest["files"]
    fresh = load_pipeline(str(tiny_model_dir))
    before = weights_of(fresh)
    fresh.load_lora_weights(str((out / lora_files[0]).parent))
    fresh.fuse_lora()
    after = weights_of(fresh)
    up, down = erased.loras[0][next(iter(erased.loras[0]))]
    name = next(iter(erased.loras[0]))
    assert torch.allclose(after[name] - before[name], up @ down, atol=1e-6)


def test_saved_edit_rebuilds_the_erased_model_bit_for_bit(base, erased, tmp_path, tiny_model_dir):
    pipe, _ = base
    EditedUnet.of(pipe.unet).apply(erased.edit)
    in_memory = generate_images(pipe, "a photo of a cat", seed=7, num_inference_steps=4)[0]
    EditedUnet.of(pipe.unet).restore()
    erased.edit.save(tmp_path)
    reloaded = load_pipeline(str(tiny_model_dir))
    EditedUnet.of(reloaded.unet).apply(CompactEdit.load(tmp_path))
    from_disk = generate_images(reloaded, "a photo of a cat", seed=7, num_inference_steps=4)[0]
    assert in_memory.tobytes() == from_disk.tobytes()
    base_image = generate_images(
        load_pipeline(str(tiny_model_dir)), "a photo of a cat", seed=7, num_inference_steps=4
    )[0]
    assert base_image.tobytes() != from_disk.tobytes()


def test_pipeline_is_left_with_its_base_weights(base, erased):
    pipe, identity = base
    before = weights_of(pipe)
    erase(pipe, identity, GROUPS[:1], QUICK)
    after = weights_of(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_resume_trains_only_the_missing_groups(base, erased):
    pipe, identity = base
    trained = []
    resumed = erase(
        pipe,
        identity,
        GROUPS,
        QUICK,
        trained_loras={0: erased.loras[0]},
        on_lora_trained=lambda index, lora: trained.append(index),
    )
    assert trained == [1]
    assert resumed.loras[0] is erased.loras[0]
    # Group 1 trained alone now, beside group 0 before: the same draws, other float rounding.
    for name, (up, down) in erased.edit.factors.items():
        torch.testing.assert_close(resumed.edit.factors[name][0], up, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(resumed.edit.factors[name][1], down, rtol=1e-4, atol=1e-7)


def test_cancel_stops_between_steps_and_restores_weights(base):
    pipe, identity = base
    before = weights_of(pipe)
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) > 8

    with pytest.raises(ErasureCancelled):
        erase(pipe, identity, GROUPS, QUICK, should_cancel=should_cancel)
    after = weights_of(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_erasing_more_from_an_erased_model_composes_on_the_base(base, erased):
    pipe, identity = base
    more = erase(
        pipe,
        identity,
        [ConceptGroup(("dog",))],
        ErasureOptions(stages=("cfr",)),
        parent=erased.edit,
    )
    child = erase(pipe, identity, [ConceptGroup(("dog",))], ErasureOptions(stages=("cfr",)))
    for name, w0 in weights_of(pipe).items():
        parent_weight = erased.edit.edited_weight(name, w0.double())
        expected = parent_weight @ child.edit.transform.double()
        assert torch.allclose(more.edit.edited_weight(name, w0.double()), expected, atol=1e-5)
    assert more.edit.metadata["parent"]["concepts"] == erased.edit.metadata["concepts"]
