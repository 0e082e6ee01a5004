"""The `mace` engine commands, run as a newcomer would, offline."""

from __future__ import annotations

import json

from PIL import Image

from app.cli import main


def test_tiny_model_erase_generate_export(tmp_path, capsys):
    model, erased = tmp_path / "tiny", tmp_path / "erased"
    assert main(["tiny-model", str(model), "--seed", "1"]) == 0
    assert (model / "model_index.json").is_file()
    code = main(
        [
            "erase",
            "--model",
            str(model),
            "--concept",
            "nudity, naked",
            "--kind",
            "explicit",
            "--concept",
            "a red car",
            "--kind",
            "object",
            "--out",
            str(erased),
            "--images-per-concept",
            "1",
            "--image-steps",
            "2",
            "--lora-steps",
            "2",
            "--no-lora-end-tokens",
            "--preservation-tokens",
            "words",
            "--concepts-per-pass",
            "1",
            "--training-precision",
            "off",
        ]
    )
    assert code == 0
    manifest = json.loads((erased / "manifest.json").read_text())
    assert manifest["concepts"][0] == {
        "targets": ["nudity", "naked"],
        "kind": "explicit",
        "anchor": "a person wearing clothes",
    }
    assert manifest["options"]["lora_steps"] == 2
    assert manifest["options"]["lora_suppress_end_tokens"] is False
    assert manifest["options"]["preservation_tokens"] == "words"
    assert manifest["options"]["concepts_per_pass"] == 1
    assert manifest["options"]["training_precision"] == "off"
    png = tmp_path / "out.png"
    assert (
        main(
            [
                "generate",
                "--erased",
                str(erased),
                "--prompt",
                "a photo of a red car",
                "--steps",
                "2",
                "--side-by-side",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    with Image.open(png) as image:
        assert image.width > 2 * 32 and image.mode == "RGB"
    capsys.readouterr()
    assert (
        main(
            ["export", "--erased", str(erased), "--format", "lora", "--out", str(tmp_path / "lora")]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["relative_error"] <= 0.01
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_generate_refuses_an_edit_of_another_base(tmp_path, tiny_model_dir, capsys):
    other = tmp_path / "other"
    main(["tiny-model", str(other), "--seed", "2"])
    erased = tmp_path / "erased"
    main(
        [
            "erase",
            "--model",
            str(other),
            "--concept",
            "cat",
            "--stages",
            "cfr",
            "--out",
            str(erased),
        ]
    )
    code = main(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--erased",
            str(erased),
            "--prompt",
            "a cat",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert code == 2
    assert "give the base it was made from" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_lora_files_a_user_brings_are_fused_not_trained(tmp_path, tiny_model_dir):
    import torch

    from worker.erasure.base_model import load_pipeline
    from worker.erasure.edit import CompactEdit
    from worker.erasure.layers import cross_attention_projections
    from worker.erasure.lora_files import save_lora_factors

    names = cross_attention_projections(load_pipeline(str(tiny_model_dir)).unet)
    generator = torch.Generator().manual_seed(0)
    factors = {  # a file that only touches to_k, as LoRAs from elsewhere may
        n: (
            torch.randn(m.weight.shape[0], 2, generator=generator) * 0.1,
            torch.randn(2, m.weight.shape[1], generator=generator),
        )
        for n, m in names.items()
        if n.endswith("to_k")
    }
    save_lora_factors(factors, tmp_path / "brought")
    out = tmp_path / "fused"
    code = main(
        [
            "erase",
            "--model",
            str(tiny_model_dir),
            "--concept",
            "cat",
            "--out",
            str(out),
            "--lora-file",
            str(tmp_path / "brought" / "pytorch_lora_weights.safetensors"),
        ]
    )
    assert code == 0
    edit = CompactEdit.load(out)
    assert set(edit.factors) == set(factors)
    assert all(edit.factors[n][0].shape[1] == 2 for n in factors)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lora_losses"] == {}  # nothing was trained
