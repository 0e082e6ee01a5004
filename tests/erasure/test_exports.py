"""Exports of an erasure, checked by loading each one back with the tool it is meant for."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from worker.erasure.edit import CompactEdit, EditedUnet
from worker.erasure.errors import ErasureInputError
from worker.erasure.exports import (
    EXPORT_FORMATS,
    KOHYA_LORA_FILE,
    LORA_FILE,
    LORA_REPORT_FILE,
    UNET_FILE,
    export_edit,
    lora_approximation,
)
from worker.erasure.layers import cross_attention_projections
from worker.erasure.tiny_model import TEXT_WIDTH, build_tiny_pipeline, save_tiny_model


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0))


@pytest.fixture(scope="module")
def base_pipe(base_model):
    return StableDiffusionPipeline.from_pretrained(base_model, safety_checker=None)


@pytest.fixture(scope="module")
def edit():
    # Large enough that float32 rounding of W0 + D stays far below the errors being compared.
    generator = torch.Generator().manual_seed(7)
    names = cross_attention_projections(build_tiny_pipeline(seed=0).unet)
    transform = torch.eye(TEXT_WIDTH) + 0.05 * torch.randn(
        TEXT_WIDTH, TEXT_WIDTH, generator=generator
    )
    factors = {}
    for name, module in names.items():
        d_out = module.weight.shape[0]
        up = 0.1 * torch.randn(d_out, 2, generator=generator)
        down = 0.1 * torch.randn(2, TEXT_WIDTH, generator=generator)
        factors[name] = (up, down)
    return CompactEdit(transform, factors, {"base_model": {"name": "tiny", "sha256": "0" * 64}})


@pytest.fixture(scope="module")
def exact(base_pipe, edit):
    """W0 and W* in float64, straight from the compact form."""
    projections = cross_attention_projections(base_pipe.unet)
    base = {n: m.weight.detach().double() for n, m in projections.items()}
    edited = {n: edit.edited_weight(n, w) for n, w in base.items()}
    return base, edited


def applied_weights(base_model, edit):
    pipe = StableDiffusionPipeline.from_pretrained(base_model, safety_checker=None)
    EditedUnet(pipe.unet).apply(edit)
    return {n: m.weight.detach().clone() for n, m in cross_attention_projections(pipe.unet).items()}


def lora_weights(base_model, folder):
    pipe = StableDiffusionPipeline.from_pretrained(base_model, safety_checker=None)
    pipe.load_lora_weights(folder)
    pipe.fuse_lora()
    return {
        n: m.weight.detach().double() for n, m in cross_attention_projections(pipe.unet).items()
    }


def relative_distance(weights, edited, base):
    residual = sum((weights[n] - edited[n]).square().sum() for n in edited)
    norm = sum((edited[n] - base[n]).square().sum() for n in edited)
    return math.sqrt(residual / norm)


def test_diffusers_export_is_the_edited_pipeline(base_model, base_pipe, edit, tmp_path):
    report = export_edit(base_model, edit, "diffusers", tmp_path / "out")

    pipe = StableDiffusionPipeline.from_pretrained(report["path"])
    expected = applied_weights(base_model, edit)
    exported = pipe.unet.state_dict()
    for name, weight in expected.items():
        assert torch.equal(exported[f"{name}.weight"], weight)
    edited_keys = {f"{name}.weight" for name in expected}
    for key, weight in base_pipe.unet.state_dict().items():
        if key not in edited_keys:
            assert torch.equal(exported[key], weight), key
    for key, weight in base_pipe.text_encoder.state_dict().items():
        assert torch.equal(pipe.text_encoder.state_dict()[key], weight), key
    assert report["bytes"] == sum(report["files"].values()) > 0
    assert "unet/diffusion_pytorch_model.safetensors" in report["files"]


def test_unet_pt_loads_into_a_fresh_unet(base_model, edit, tmp_path):
    report = export_edit(base_model, edit, "unet-pt", tmp_path / "out")
    assert report["path"] == str(tmp_path / "out" / UNET_FILE)

    unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet")
    unet.load_state_dict(torch.load(report["path"]))
    expected = applied_weights(base_model, edit)
    for name, module in cross_attention_projections(unet).items():
        assert torch.equal(module.weight, expected[name])


def test_lora_error_matches_the_report(base_model, edit, exact, tmp_path):
    report = export_edit(base_model, edit, "lora", tmp_path / "lora", lora_tolerance=0.3)
    saved = json.loads((tmp_path / "lora" / LORA_REPORT_FILE).read_text())
    base, edited = exact

    assert 1 < report["rank"] < TEXT_WIDTH
    assert report["max_relative_error"] <= 0.3
    assert saved["base_model"] == edit.metadata["base_model"]
    assert saved["rank"] == report["rank"]
    assert max(m["rank_needed"] for m in saved["matrices"].values()) == report["rank"]
    fused = lora_weights(base_model, tmp_path / "lora")
    assert relative_distance(fused, edited, base) == pytest.approx(
        report["relative_error"], abs=1e-4
    )
    for name, entry in saved["matrices"].items():
        one = relative_distance({name: fused[name]}, {name: edited[name]}, {name: base[name]})
        assert one == pytest.approx(entry["relative_error"], abs=1e-4)


def test_full_rank_lora_is_exact(base_model, edit, exact, tmp_path):
    report = export_edit(base_model, edit, "lora", tmp_path / "lora", lora_rank=TEXT_WIDTH)
    base, edited = exact

    assert report["rank"] == TEXT_WIDTH
    assert report["relative_error"] < 1e-12
    assert relative_distance(lora_weights(base_model, tmp_path / "lora"), edited, base) < 1e-5


def test_kohya_file_gives_the_same_weights(base_model, edit, tmp_path):
    diffusers = export_edit(base_model, edit, "lora", tmp_path / "lora", lora_rank=3)
    kohya = export_edit(base_model, edit, "lora-kohya", tmp_path / "kohya", lora_rank=3)
    assert kohya["path"] == str(tmp_path / "kohya" / KOHYA_LORA_FILE)
    assert kohya["relative_error"] == diffusers["relative_error"]

    from safetensors.torch import load_file

    tensors = load_file(kohya["path"])
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert tensors[f"{key}.lora_down.weight"].shape == (3, TEXT_WIDTH)
    assert tensors[f"{key}.alpha"].item() == 3
    assert len(tensors) == 3 * len(load_file(tmp_path / "lora" / LORA_FILE)) / 2

    from_diffusers = lora_weights(base_model, tmp_path / "lora")
    from_kohya = lora_weights(base_model, tmp_path / "kohya")
    assert from_kohya.keys() == from_diffusers.keys()
    for name, weight in from_kohya.items():
        torch.testing.assert_close(weight, from_diffusers[name], rtol=0, atol=1e-6)


def test_common_rank_pads_small_matrices_with_zeros():
    generator = torch.Generator().manual_seed(3)
    transform = torch.eye(8) + 0.1 * torch.randn(8, 8, generator=generator)
    base = {
        "narrow": torch.randn(4, 8, generator=generator),
        "wide": torch.randn(16, 8, generator=generator),
    }
    edit = CompactEdit(transform, {}, {})

    approx = lora_approximation(edit, base, rank=6)
    assert approx.up["narrow"].shape == (4, 6) and approx.down["narrow"].shape == (6, 8)
    assert approx.matrices["narrow"]["rank"] == 4
    assert approx.matrices["narrow"]["relative_error"] == 0
    delta = base["narrow"].double() @ (transform.double() - torch.eye(8, dtype=torch.float64))
    product = approx.up["narrow"].double() @ approx.down["narrow"].double()
    torch.testing.assert_close(product, delta, rtol=0, atol=1e-6)
    # Overall error: the residual energy of all matrices over their total delta energy.
    narrow, wide = approx.matrices["narrow"], approx.matrices["wide"]
    assert wide["relative_error"] > 0
    assert approx.relative_error**2 * (narrow["delta_norm"] ** 2 + wide["delta_norm"] ** 2) == (
        pytest.approx((wide["relative_error"] * wide["delta_norm"]) ** 2)
    )

    # Without a rank, the tolerance is met by every matrix with one common rank.
    approx = lora_approximation(edit, base, tolerance=0.05)
    assert approx.rank == max(m["rank_needed"] for m in approx.matrices.values())
    assert approx.max_relative_error <= 0.05


def test_unknown_format_names_the_valid_ones(base_model, edit, tmp_path):
    with pytest.raises(ErasureInputError) as caught:
        export_edit(base_model, edit, "ckpt", tmp_path / "out")
    assert all(fmt in str(caught.value) for fmt in EXPORT_FORMATS)
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_is_refused(base_model, edit, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_edit(base_model, edit, "unet-pt", out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failed_export_leaves_nothing(base_model, edit, tmp_path):
    wrong = CompactEdit(torch.eye(TEXT_WIDTH + 1), {}, {})
    with pytest.raises(ErasureInputError, match="does not fit"):
        export_edit(base_model, wrong, "lora", tmp_path / "out")
    with pytest.raises(ErasureInputError, match="lora_rank"):
        export_edit(base_model, edit, "lora", tmp_path / "out", lora_rank=0)
    assert list(tmp_path.iterdir()) == []
