"""What stage 2 costs per concept, one group at a time against batched, side by side in one run.

Stage 2 (training images with their masks, then one LoRA per group) is what a mass erasure
spends its time on. For each model and mode this runs the engine's own stage 2
(`worker.erasure.stage2.train_group_loras`) on N groups and reports, per concept:

- images_s: generating the training images and their attention masks;
- setup_s: everything before a pass's first training step (VAE latents, prompt encodings,
  every random draw, the LoRA factors);
- lora_s: the training steps;
- stage2_s: the whole of stage 2 (wall clock);
- projected_100_s: 100 x stage2_s + CFR and fusion for 100 groups (measured once per model).

Modes: `sequential` is one group per pass and one image per sampling call; `batched` is the
engine's default (groups per pass from free memory, up to 32; images per call up to 64 on a GPU).
Both use the default settings: 8 images of 30 sampling steps (guidance 7.5), 50 LoRA steps.

Models: `toy` (the project's trained toy model, on the CPU or GPU) and, where CUDA is present,
`sd14-arch` (Stable Diffusion 1.4's architecture with seeded random weights, 512 px, fp16).

    python bench/stage2_cost.py --json bench/results/stage2_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/stage2_cost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from worker.erasure.concepts import ConceptGroup  # noqa: E402
from worker.erasure.edit import CompactEdit  # noqa: E402
from worker.erasure.options import ErasureOptions  # noqa: E402
from worker.erasure.stage2 import train_group_loras  # noqa: E402
from worker.erasure.versions import library_versions  # noqa: E402

MODES = {"sequential": {"concepts_per_pass": 1, "image_batch_size": 1}, "batched": {}}
PROJECTED_CONCEPTS = 100
# One-word object concepts for the SD-1.4-architecture model (its weights are random: any words).
SD14_NOUNS = tuple(
    """cat dog car tree house boat bird horse chair lamp clock bridge castle tower guitar piano
    violin apple banana cherry rose tulip shoe hat bicycle train plane rocket robot dragon lion
    tiger bear whale shark owl fox wolf deer cow sheep goat pig duck swan frog snake turtle crab
    octopus dolphin penguin eagle parrot camel zebra giraffe elephant monkey panda koala kangaroo
    rabbit squirrel mouse bee butterfly spider ant ladybug snail candle kettle teapot cup bottle
    vase mirror window door fence ladder bench tent umbrella kite balloon anchor compass
    telescope camera radio phone laptop keyboard book pencil brush scissors hammer axe sword
    shield crown ring necklace""".split()  # noqa: SIM905
)


def toy_setup(concepts: int, device: str | None, dtype: torch.dtype | None):
    """The shipped toy model and its first `concepts` object concepts with the toy settings."""
    from worker.erasure.base_model import load_pipeline
    from worker.toy.commands import SHIPPED_MODEL, pipeline_dir
    from worker.toy.prompts import ANCHORS, CONCEPTS, ERASURE_SETTINGS, erasure_templates

    pipe = load_pipeline(str(pipeline_dir(SHIPPED_MODEL)), device=device, dtype=dtype)
    templates = erasure_templates("object")
    objects = [c for c in CONCEPTS if c.kind == "object"]
    groups = [
        ConceptGroup((c.surface_forms[0],), "object", ANCHORS["object"], templates=templates)
        for c in (objects * (concepts // len(objects) + 1))[:concepts]
    ]
    return pipe, groups, dict(ERASURE_SETTINGS["object"])


def sd14_setup(concepts: int, device: str | None, dtype: torch.dtype | None):
    """SD 1.4's architecture, random weights, and `concepts` one-word object groups."""
    from bench.sd14_models import sd14_pipeline

    pipe = sd14_pipeline().to(device or "cuda", dtype or torch.float16)
    pipe.set_progress_bar_config(disable=True)
    words = (SD14_NOUNS * (concepts // len(SD14_NOUNS) + 1))[:concepts]
    return pipe, [ConceptGroup((word,)) for word in words], {}


SETUPS = {"toy": toy_setup, "sd14-arch": sd14_setup}


def stage2_run(pipe, groups, options: ErasureOptions) -> dict:
    """Stage 2 of `groups` on the pipeline's weights, timed by part."""
    timings: dict[str, float] = {}
    identity = CompactEdit(torch.eye(pipe.text_encoder.config.hidden_size), {})
    _synchronize(pipe)
    started = time.perf_counter()
    train_group_loras(
        pipe,
        groups,
        range(len(groups)),
        options.resolve(groups),
        refined=identity,
        timings=timings,
    )
    _synchronize(pipe)
    total = time.perf_counter() - started
    count = len(groups)
    return {
        "images_s": timings.get("lora_images", 0.0) / count,
        "setup_s": timings.get("lora_setup", 0.0) / count,
        "lora_s": timings.get("lora_steps", 0.0) / count,
        "stage2_s": total / count,
    }


def closed_form_seconds(pipe, groups, options: dict) -> dict:
    """CFR and fusion for `groups` (stage 2 skipped: each group gets a seeded random LoRA)."""
    from worker.erasure.base_model import ModelIdentity
    from worker.erasure.erase import erase
    from worker.erasure.layers import cross_attention_projections

    generator = torch.Generator().manual_seed(0)
    shapes = {n: m.weight.shape for n, m in cross_attention_projections(pipe.unet).items()}
    loras = {
        index: {
            name: (torch.randn(d_out, 1, generator=generator) * 1e-3, torch.randn(1, d_in))
            for name, (d_out, d_in) in shapes.items()
        }
        for index in range(len(groups))
    }
    engine_options = ErasureOptions(**options)
    identity = ModelIdentity(name="bench", sha256="0" * 64)
    erase(pipe, identity, groups[:2], engine_options, trained_loras={0: loras[0], 1: loras[1]})
    started = time.perf_counter()
    result = erase(pipe, identity, groups, engine_options, trained_loras=loras)
    _synchronize(pipe)
    return {
        "closed_form_s": time.perf_counter() - started,
        "cfr_s": result.timings.get("cfr", 0.0),
        "fusion_s": result.timings.get("fusion", 0.0),
        "preservation_s": result.timings.get("preservation", 0.0),
    }


def _synchronize(pipe) -> None:
    if pipe.unet.device.type == "cuda":
        torch.cuda.synchronize(pipe.unet.device)


def _uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True)
    return done.stdout.strip() or str(os.getloadavg())


def measure_model(model: str, args, write) -> list[dict]:
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = "cuda" if cuda else "cpu"
    dtype = torch.float16 if cuda else torch.float32
    concepts = args.concepts if model == "toy" else args.sd14_concepts
    pipe, groups, settings = SETUPS[model](max(concepts, PROJECTED_CONCEPTS), device, dtype)
    common = {
        **settings,
        "images_per_concept": args.images,
        "image_steps": args.image_steps,
        "lora_steps": args.lora_steps,
    }
    _log(f"{model}: warm-up on {device}")
    stage2_run(pipe, groups[:1], ErasureOptions(**{**common, "lora_steps": 2}))
    closed = closed_form_seconds(pipe, groups[:PROJECTED_CONCEPTS], settings)
    _log(f"{model}: CFR + fusion for {PROJECTED_CONCEPTS} groups {closed['closed_form_s']:.2f} s")
    runs = []
    for mode in args.modes:
        count = (
            concepts if mode == "batched" else min(concepts, args.sequential_concepts or concepts)
        )
        options = ErasureOptions(**common, **MODES[mode])
        load_before = _uptime()
        _log(f"{model} {mode}: {count} groups")
        figures = stage2_run(pipe, groups[:count], options)
        run = {
            "model": model,
            "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            "dtype": str(dtype).removeprefix("torch."),
            "concepts": count,
            "mode": mode,
            **{key: round(value, 4) for key, value in figures.items()},
            "projected_100_s": round(
                PROJECTED_CONCEPTS * figures["stage2_s"] + closed["closed_form_s"], 2
            ),
            **{f"{key}_100": round(value, 4) for key, value in closed.items()},
            "uptime_before": load_before,
            "uptime_after": _uptime(),
        }
        runs.append(run)
        _log(f"  {format_row(run)}")
        write(runs)
    return runs


def format_row(run: dict) -> str:
    return (
        f"{run['model']:9} {run['mode']:10} {run['concepts']:3d} groups"
        f"  images {run['images_s']:7.3f}"
        f"  setup {run['setup_s']:6.3f}  lora {run['lora_s']:7.3f}  stage 2 {run['stage2_s']:7.3f}"
        f" s/concept  100 concepts {run['projected_100_s']:8.1f} s"
    )


def ratios(runs: list[dict]) -> list[dict]:
    """Batched over sequential, per model, from the same run."""
    found = []
    for model in dict.fromkeys(r["model"] for r in runs):
        by_mode = {r["mode"]: r for r in runs if r["model"] == model}
        if {"sequential", "batched"} <= set(by_mode):
            sequential, batched = by_mode["sequential"], by_mode["batched"]
            found.append(
                {
                    "model": model,
                    **{
                        f"{key}_batched_over_sequential": round(batched[key] / sequential[key], 3)
                        for key in ("images_s", "lora_s", "stage2_s", "projected_100_s")
                        if sequential[key]
                    },
                }
            )
    return found


def _log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_models = "toy,sd14-arch" if torch.cuda.is_available() else "toy"
    p.add_argument("--models", default=default_models, help=f"from {', '.join(SETUPS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"from {', '.join(MODES)}")
    p.add_argument("--concepts", type=int, default=20, help="groups on the toy model (20)")
    p.add_argument("--sd14-concepts", type=int, default=32, help="groups on sd14-arch (32)")
    p.add_argument(
        "--sequential-concepts",
        type=int,
        help="groups the sequential mode runs (default: as many as batched; its cost per "
        "concept does not depend on the count)",
    )
    p.add_argument("--images", type=int, default=8, help="training images per group (8)")
    p.add_argument("--image-steps", type=int, default=30, help="sampling steps per image (30)")
    p.add_argument("--lora-steps", type=int, default=50, help="LoRA steps per group (50)")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto")
    p.add_argument("--json", type=Path, help="write {'runs': [...], ...} here")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.models) - set(SETUPS) or set(args.modes) - set(MODES):
        p.error(f"models from {', '.join(SETUPS)}; modes from {', '.join(MODES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: list[dict] = []

    def write(model_runs: list[dict]) -> None:
        if not args.json:
            return
        payload = {
            "runs": runs + model_runs,
            "ratios": ratios(runs + model_runs),
            "settings": {
                "images_per_concept": args.images,
                "image_steps": args.image_steps,
                "lora_steps": args.lora_steps,
                "modes": MODES,
            },
            "environment": {
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available(),
                "python": platform.python_version(),
                "versions": library_versions(),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))

    for model in args.models:
        try:
            runs += measure_model(model, args, write)
        except Exception as exc:  # one model failing must not lose the others' figures
            _log(f"{model}: failed: {type(exc).__name__}: {exc}")
    print("\n".join(format_row(run) for run in runs))
    for ratio in ratios(runs):
        print(ratio)
    write([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
