"""`mace toy train | train-judge | judge`: the toy world's model, its judge and its scores."""

from __future__ import annotations

import json
import os
from pathlib import Path

from worker.erasure.errors import ErasureInputError

from .judge import JUDGE_FILE

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHIPPED_MODEL = Path(__file__).parent / "model"


def _quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library_logging in (diffusers_logging, transformers_logging):
        library_logging.set_verbosity_error()
        library_logging.disable_progress_bar()


def default_judge(model_dir: Path | None) -> Path | None:
    """The judge next to the model if there is one, else the shipped judge, else None."""
    for candidate in (model_dir / JUDGE_FILE if model_dir else None, SHIPPED_MODEL / JUDGE_FILE):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def pipeline_dir(model: Path) -> Path:
    """A toy model folder (with `pipeline/`) or a pipeline folder itself."""
    for candidate in (model / "pipeline", model):
        if (candidate / "model_index.json").is_file():
            return candidate
    raise ErasureInputError(f"no diffusers pipeline in {model} or {model / 'pipeline'}")


def train(args) -> int:
    from .train import TrainingPlan, train_toy_model

    _quiet_libraries()
    out = Path(args.out)
    judge = Path(args.judge) if args.judge else default_judge(out)
    if judge is None:
        print("no judge found: the log will have no accuracy (mace toy train-judge makes one)")
    plan = TrainingPlan(minutes=args.minutes, seed=args.seed)
    try:
        path = train_toy_model(
            out, plan, resume=args.resume, judge_path=judge, threads=args.threads
        )
    except FileExistsError as exc:
        raise ErasureInputError(str(exc)) from exc
    print(f"pipeline written to {path}" if path else "stopped before the end; --resume continues")
    return 0


def train_judge(args) -> int:
    import torch

    from .judge import save_judge, train_judge

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    autoencoder = None
    if args.autoencoder:
        from diffusers import AutoencoderKL

        _quiet_libraries()
        source = pipeline_dir(Path(args.autoencoder))
        autoencoder = AutoencoderKL.from_pretrained(source / "vae", dtype=torch.float32)
    judge, scores = train_judge(
        seed=args.seed,
        scenes=args.scenes,
        epochs=args.epochs,
        workers=args.threads or os.cpu_count() or 1,
        autoencoder=autoencoder,
    )
    path = save_judge(judge, args.out)
    report = {
        "seed": args.seed,
        "scenes": args.scenes,
        "epochs": args.epochs,
        "autoencoder": args.autoencoder,
        "held_out_accuracy": scores,
    }
    path.with_name("judge_accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"judge written to {path}; held-out accuracy "
        + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    )
    return 0


def judge(args) -> int:
    import torch

    from worker.erasure.base_model import load_pipeline

    from .judge import load_judge
    from .scoring import score_concepts

    _quiet_libraries()
    model = Path(args.model)
    judge_path = Path(args.judge) if args.judge else default_judge(model)
    if judge_path is None:
        raise ErasureInputError("no judge: pass --judge or run mace toy train-judge first")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(str(pipeline_dir(model)), dtype=torch.float32, device=torch.device("cpu"))
    scores = score_concepts(
        pipe,
        load_judge(judge_path),
        per_concept=args.per_concept,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
    )
    for name, value in scores.per_concept.items():
        synonym = scores.per_synonym_concept.get(name)
        extra = f"  synonyms {synonym:.3f}" if synonym is not None else ""
        print(f"{name:>12} {value:.3f}{extra}")
    print(
        f"mean over {len(scores.per_concept)} concepts: {scores.mean:.3f} "
        f"(objects {scores.kind_mean('object'):.3f}, styles {scores.kind_mean('style'):.3f}); "
        f"synonym prompts: {scores.synonym_mean:.3f}"
    )
    if args.json:
        report = {
            **scores.to_dict(),
            "per_concept_images": args.per_concept,
            "seed": args.seed,
            "steps": args.steps,
            "guidance_scale": args.guidance_scale,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
