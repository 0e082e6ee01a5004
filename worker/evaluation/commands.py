"""CLI handlers of `mace evaluate` and `mace run` (imported only when those commands run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from worker.erasure.errors import ErasureInputError

# transformers warns at import about an optional image backend no metric here uses.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def parse_metric(text: str) -> dict:
    """`NAME` or `NAME:{json config}` -> {"name": ..., "config": {...}}."""
    name, _, raw = text.partition(":")
    config = {}
    if raw.strip():
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ErasureInputError(f"--metric {name}: the config is not JSON ({exc})") from exc
        if not isinstance(config, dict):
            raise ErasureInputError(f"--metric {name}: the config must be a JSON object")
    return {"name": name.strip(), "config": config}


class ProgressBar:
    """A tqdm bar fed by the run's (done, total) callback."""

    def __init__(self, description: str):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.description = description
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self._tqdm(total=total, desc=self.description)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _empty_out(path: str) -> Path:
    out = Path(path)
    if out.exists() and any(out.iterdir()):
        raise ErasureInputError(f"{out} exists and is not empty; choose a new --out folder")
    return out


def _models(args):
    """({label: EditedModel}, {label: provenance}) for --model and --edit / --base-only."""
    from worker.erasure.base_model import load_pipeline, model_identity
    from worker.erasure.edit import CompactEdit, file_sha256

    from .sampling import EditedModel

    if bool(args.edit) == bool(args.base_only):
        raise ErasureInputError("give --edit (base vs erased) or --base-only, not both")
    edit = CompactEdit.load(args.edit) if args.edit else None
    model = args.model or (edit.metadata.get("base_model", {}).get("name") if edit else None)
    if not model:
        raise ErasureInputError("give --model: the base model folder or cached HF id")
    identity = model_identity(model)
    info = {"base": {"model": identity.to_dict()}}
    if edit is not None:
        expected = edit.metadata.get("base_model", {}).get("sha256")
        if expected and expected != identity.sha256:
            raise ErasureInputError(
                f"{args.edit} was made from a base model with hash {expected[:12]}, "
                f"but {model} has hash {identity.sha256[:12]}: give the base it was made from"
            )
        path = Path(args.edit)
        path = path / "edit.safetensors" if path.is_dir() else path
        info["erased"] = {"model": identity.to_dict(), "edit_sha256": file_sha256(path)}
    pipe = load_pipeline(model)
    models = {"base": EditedModel(pipe, None)}
    if edit is not None:
        models["erased"] = EditedModel(pipe, edit)
    return models, info


def evaluate(args) -> int:
    from .prompts import read_prompt_file
    from .run import run_evaluation
    from .sampling import SamplerSettings

    out = _empty_out(args.out)
    metrics = [parse_metric(text) for text in args.metric]
    prompt_sets = {"default": read_prompt_file(args.prompts)} if args.prompts else {}
    sampler = SamplerSettings(
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        width=args.width,
        height=args.height,
        images_per_prompt=args.images_per_prompt,
        batch_size=args.batch_size,
    ).validate()
    models, info = _models(args)
    bar = ProgressBar("evaluate")
    try:
        report = run_evaluation(
            models,
            metrics,
            out,
            prompt_sets=prompt_sets,
            sampler=sampler,
            progress=bar,
            model_info=info,
        )
    finally:
        bar.close()
    for name, values in report["summary"].items():
        shown = ", ".join(f"{label} {value:.4f}" for label, value in values.items())
        print(f"{name}: {shown}")
    print(f"wrote {out / 'report.json'}, {out / 'report.html'}")
    return 0


def run_experiment(args) -> int:
    from worker.erasure.commands import StageBars

    from .eval_learn import load_experiment
    from .eval_learn import run_experiment as run

    config = load_experiment(args.config)
    stages, bar = StageBars(), ProgressBar("evaluate")
    try:
        report, folder = run(
            config,
            config_dir=Path(args.config).resolve().parent,
            progress=bar,
            erase_progress=stages,
        )
    finally:
        stages.close()
        bar.close()
    results = report.get("metric_results") or {report["metric_name"]: report["metric_result"]}
    for name, result in results.items():
        print(f"{name}: {result['value']:.4f}")
    print(f"wrote {folder}")
    return 0
