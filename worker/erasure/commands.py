"""The engine's CLI commands (`mace tiny-model | erase | generate | export`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .errors import ErasureInputError

# transformers warns at import about an optional image backend no command here uses.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class StageBars:
    """One tqdm bar per stage, fed by the engine's (stage, fraction) progress callback."""

    def __init__(self):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.bars = {}

    def __call__(self, stage: str, fraction: float) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = self._tqdm(
                total=100,
                desc=f"{stage:>12}",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}",
            )
        bar.update(round(100 * fraction) - bar.n)
        if fraction >= 1.0:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def tiny_model(args) -> int:
    from .tiny_model import save_tiny_model

    out = Path(args.dir)
    if out.exists() and any(out.iterdir()):
        raise ErasureInputError(f"{out} exists and is not empty; choose a new folder")
    save_tiny_model(out, seed=args.seed)
    print(f"tiny model written to {out}")
    return 0


def _groups_from_args(args):
    from .concepts import ConceptGroup

    def per_group(values, name):
        if not values:
            return [None] * len(args.concept)
        if len(values) == 1:
            return values * len(args.concept)
        if len(values) != len(args.concept):
            raise ErasureInputError(
                f"give --{name} once, or once per --concept ({len(args.concept)})"
            )
        return values

    kinds = per_group(args.kind, "kind")
    anchors = per_group(args.anchor, "anchor")
    return [
        ConceptGroup.parse(text, kind or "object", anchor)
        for text, kind, anchor in zip(args.concept, kinds, anchors, strict=True)
    ]


def _options_from_args(args):
    from .options import ErasureOptions

    prompts = None
    if args.preservation_prompts:
        path = Path(args.preservation_prompts)
        if not path.is_file():
            raise ErasureInputError(f"--preservation-prompts: no file at {path}")
        prompts = tuple(line for line in path.read_text().splitlines() if line.strip())
    overrides = {
        "cfr_lambda": args.cfr_lambda,
        "preservation_weight": args.preservation_weight,
        "fusion_preservation_weight": args.fusion_preservation_weight,
        "lora_learning_rate": args.lora_lr,
        "lora_steps": args.lora_steps,
        "cfis": args.cfis,
    }
    return ErasureOptions(
        stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()),
        preservation_prompts=prompts,
        fusion_lambda=args.fusion_lambda,
        lora_rank=args.lora_rank,
        lora_batch_size=args.lora_batch_size,
        lora_suppress_end_tokens=args.lora_end_tokens,
        preservation_tokens=args.preservation_tokens,
        images_per_concept=args.images_per_concept,
        image_steps=args.image_steps,
        mask_provider=args.mask_provider,
        seed=args.seed,
        concepts_per_pass=args.concepts_per_pass,
        image_batch_size=args.image_batch_size,
        training_precision=args.training_precision,
        **{k: v for k, v in overrides.items() if v is not None},
    )


def erase(args) -> int:
    from .artifacts import write_erasure
    from .base_model import load_pipeline, model_identity
    from .erase import erase as run_erasure
    from .erase import validate_request

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ErasureInputError(f"{out} exists and is not empty; choose a new --out folder")
    groups = _groups_from_args(args)
    options = _options_from_args(args).validate()
    identity = model_identity(args.model)
    pipe = load_pipeline(args.model)
    validate_request(pipe.tokenizer, groups, options)
    brought = _lora_files(args, pipe)
    bars = StageBars()
    try:
        result = run_erasure(pipe, identity, groups, options, progress=bars, trained_loras=brought)
    finally:
        bars.close()
    write_erasure(result, out)
    for line in result.log:
        print(line)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"erased {len(groups)} concept group(s) in {timings}; wrote {out}")
    return 0


def _lora_files(args, pipe) -> dict:
    """LoRA files a user brings, one per --concept, fused instead of trained."""
    from .layers import cross_attention_projections
    from .lora_files import load_lora_factors

    if not args.lora_file:
        return {}
    if len(args.lora_file) != len(args.concept):
        raise ErasureInputError(f"give --lora-file once per --concept ({len(args.concept)})")
    names = list(cross_attention_projections(pipe.unet))
    return {i: load_lora_factors(path, names) for i, path in enumerate(args.lora_file)}


def _erased_pipeline(model: str | None, erased: str | None):
    """The base pipeline, with the edit in `erased` applied when given (base checked by hash)."""
    from .base_model import load_pipeline, model_identity
    from .edit import CompactEdit, EditedUnet

    edit = CompactEdit.load(erased) if erased else None
    if model is None:
        if edit is None:
            raise ErasureInputError("give --model (and --erased to use an erased model)")
        model = edit.metadata["base_model"]["name"]
    pipe = load_pipeline(model)
    if edit is not None:
        expected = edit.metadata.get("base_model", {}).get("sha256")
        actual = model_identity(model).sha256
        if expected and expected != actual:
            raise ErasureInputError(
                f"{erased} was made from a base model with hash {expected[:12]}, "
                f"but {model} has hash {actual[:12]}: give the base it was made from"
            )
        EditedUnet.of(pipe.unet).apply(edit)
    return pipe


def side_by_side(left, right, labels=("base", "erased")):
    """Two images next to each other with a caption strip, upscaled so small models are visible."""
    from PIL import Image, ImageDraw

    scale = max(1, 256 // max(left.width, left.height))
    left, right = (
        im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in (left, right)
    )
    canvas = Image.new("RGB", (left.width + right.width + 8, left.height + 20), "white")
    canvas.paste(left, (0, 20))
    canvas.paste(right, (left.width + 8, 20))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), labels[0], fill="black")
    draw.text((left.width + 12, 4), labels[1], fill="black")
    return canvas


def generate(args) -> int:
    from .edit import EditedUnet
    from .generate import generate_images

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ErasureInputError("--out must name a .png file")
    if args.side_by_side and not args.erased:
        raise ErasureInputError("--side-by-side compares with an erased model: add --erased")
    pipe = _erased_pipeline(args.model, args.erased)
    pipe.set_progress_bar_config(disable=False)

    def draw():
        return generate_images(
            pipe,
            args.prompt,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            width=args.width,
            height=args.height,
        )[0]

    image = draw()
    if args.side_by_side:
        erased = image
        edited = EditedUnet.of(pipe.unet)
        edited.restore()
        image = side_by_side(draw(), erased)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"wrote {out}")
    return 0


def export(args) -> int:
    from .edit import CompactEdit
    from .exports import export_edit

    edit = CompactEdit.load(args.erased)
    model = args.model or edit.metadata["base_model"]["name"]
    report = export_edit(model, edit, args.format, Path(args.out), lora_rank=args.lora_rank)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0
