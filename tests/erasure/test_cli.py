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
