"""`mace run -c experiment.json`: an eval-learn experiment configuration, run with this engine.

Accepted: `output_dir`, `technique: {name: "mace", config: {...}}`, and `metric` (one) or
`metrics` (a list) of {name, config}. The technique runs MACE's three stages (eval-learn's own
MACE wrapper runs closed-form refinement only). Reports follow eval-learn's layout:
<output_dir>/mace_<metric or "multi">_<run_id>/<run_id>_report.json and images/, with this
package's report.json and report.html next to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from worker.erasure.errors import ErasureInputError

from .eval_learn_metrics import translate_metric

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
EVAL_LEARN_KEYS = {
    "device",
    "use_fp16",
    "erase_concept",
    "erase_from",
    "lambda_cfr",
    "save_path",
    "load_path",
    "num_inference_steps",
    "guidance_scale",
}
# Extensions of this engine, accepted in the technique config next to eval-learn's keys.
ENGINE_KEYS = {
    "model_id",
    "seed",
    "kind",
    "compare_base",
    "batch_size",
    "stages",
    "preservation_weight",
    "fusion_lambda",
    "fusion_preservation_weight",
    "preservation_tokens",
    "lora_rank",
    "lora_learning_rate",
    "lora_steps",
    "lora_batch_size",
    "lora_suppress_end_tokens",
    "cfis",
    "images_per_concept",
    "image_steps",
    "mask_provider",
    "concepts_per_pass",
    "image_batch_size",
    "training_precision",
}
EXPLICIT_WORDS = {"nudity", "nude", "naked", "nsfw", "sexual"}


def load_experiment(path: str | Path) -> dict:
    """The experiment configuration from a JSON (or, with PyYAML installed, YAML) file."""
    path = Path(path)
    if not path.is_file():
        raise ErasureInputError(f"no experiment configuration at {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ErasureInputError("YAML configurations need PyYAML; or use JSON") from exc
        return yaml.safe_load(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ErasureInputError(f"{path} is not valid JSON: {exc}") from exc


def _path_resolver(config_dir: Path | None) -> Callable[[str], Path]:
    """Relative paths as eval-learn reads them (from the working directory), falling back to
    the configuration's folder so shipped examples find their prompt files."""

    def local(value: str) -> Path:
        path = Path(value).expanduser()
        if path.is_absolute() or path.exists() or config_dir is None:
            return path
        beside = config_dir / path
        return beside if beside.exists() else path

    return local


def _metric_entries(config: dict) -> tuple[list[dict], bool]:
    if config.get("metrics"):
        entries, single = list(config["metrics"]), False
    elif config.get("metric"):
        entries, single = [config["metric"]], True
    else:
        raise ErasureInputError("the configuration needs `metric` or `metrics`")
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    if not all(names):
        raise ErasureInputError("each metric needs a name")
    if len(set(names)) != len(names):
        raise ErasureInputError(f"metrics contains duplicates: {names}")
    return entries, single


def erasure_request(technique: dict, seed: int | None = None):
    """(concept groups, ErasureOptions) from eval-learn's MACE technique config; `seed` (the
    experiment's) wins over the technique config's."""
    from worker.erasure.concepts import ConceptGroup
    from worker.erasure.options import ErasureOptions

    unknown = set(technique) - EVAL_LEARN_KEYS - ENGINE_KEYS
    if unknown:
        raise ErasureInputError(
            f"unknown MACE technique setting(s) {sorted(unknown)}; eval-learn's are "
            f"{sorted(EVAL_LEARN_KEYS)}, this engine adds {sorted(ENGINE_KEYS)}"
        )
    concepts = technique.get("erase_concept", "nudity")
    targets = [concepts] if isinstance(concepts, str) else list(concepts)
    anchor = technique.get("erase_from")
    if isinstance(anchor, list):
        if len(set(anchor)) > 1:
            raise ErasureInputError("erase_from: MACE maps a concept group to one anchor")
        anchor = anchor[0] if anchor else None
    kind = technique.get("kind") or (
        "explicit" if targets and targets[0].lower() in EXPLICIT_WORDS else "object"
    )
    group = ConceptGroup(tuple(targets), kind, "" if anchor is None else anchor)
    option_names = ({f.name for f in fields(ErasureOptions)} & ENGINE_KEYS) - {"seed"}
    extra = {k: technique[k] for k in option_names if k in technique}
    if "stages" in extra:
        extra["stages"] = tuple(extra["stages"])
    options = ErasureOptions(
        cfr_lambda=float(technique.get("lambda_cfr", 0.1)),
        seed=int(technique.get("seed", 0) if seed is None else seed),
        **extra,
    ).validate()
    return [group], options


def run_experiment(
    config: dict,
    *,
    config_dir: Path | None = None,
    resolve_model: Callable[[str], str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    erase_progress: Callable[[str, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resources=None,
) -> tuple[dict, Path]:
    """Run an eval-learn experiment configuration; returns (eval-learn report, run folder).

    Args:
        config: the parsed configuration.
        config_dir: folder of the configuration file, to find files named relative to it.
        resolve_model: maps `model_id` to a local folder or cached HF id (the service passes
            its registered base models here); default: `model_id` as given.
        progress: (done, total) of the evaluation.
        erase_progress: (stage, fraction) of the erasure.
        should_cancel: polled between steps of the erasure and the evaluation.
        resources: the metric models (`EvaluationResources`), injectable for tests.
    """
    technique = config.get("technique") or {}
    if technique.get("name") != "mace":
        raise ErasureInputError(f"technique {technique.get('name')!r}: only mace runs here")
    tech = dict(technique.get("config") or {})
    entries, single = _metric_entries(config)
    local = _path_resolver(config_dir)
    translated = [translate_metric(e["name"], e.get("config") or {}, local) for e in entries]
    seed = int(config.get("seed", tech.get("seed", 0)))
    groups, options = erasure_request(tech, seed)
    models, erasure_info = _erased_models(
        tech, groups, options, local, resolve_model, erase_progress, should_cancel
    )
    return _evaluate(
        config,
        tech,
        translated,
        single,
        seed,
        models,
        erasure_info,
        progress,
        should_cancel,
        resources,
    )


def _device(tech: dict):
    import torch

    notes = []
    device = str(tech.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        notes.append(f"device {device!r} is not available here; ran on cpu")
        device = "cpu"
    half = bool(tech.get("use_fp16", True)) and device.startswith("cuda")
    if tech.get("use_fp16", True) and not half:
        notes.append("use_fp16 applies on CUDA only; ran in float32")
    return torch.device(device), (torch.float16 if half else torch.float32), notes


def _erased_models(tech, groups, options, local, resolve_model, erase_progress, should_cancel):
    from worker.erasure.artifacts import write_erasure
    from worker.erasure.base_model import load_pipeline, model_identity
    from worker.erasure.edit import CompactEdit
    from worker.erasure.erase import erase

    from .sampling import EditedModel

    save_path = local(tech["save_path"]) if tech.get("save_path") else None
    if save_path and not tech.get("load_path") and save_path.exists() and any(save_path.iterdir()):
        raise ErasureInputError(f"save_path {save_path} exists and is not empty")
    model_id = str(tech.get("model_id", DEFAULT_MODEL))
    source = resolve_model(model_id) if resolve_model else model_id
    identity = model_identity(source)
    device, dtype, notes = _device(tech)
    pipe = load_pipeline(source, device=device, dtype=dtype)
    info = {"model_id": model_id, "model": identity.to_dict(), "notes": notes}
    load_path = local(tech["load_path"]) if tech.get("load_path") else None
    if load_path and load_path.is_file() and load_path.suffix == ".pt":
        import torch

        if tech.get("compare_base"):
            raise ErasureInputError("compare_base needs a MACE edit, not a UNet state dict")
        state = torch.load(load_path, map_location="cpu", weights_only=True)
        pipe.unet.load_state_dict(state)
        info["loaded_unet_state_dict"] = str(load_path)
        return {"erased": pipe}, info
    if load_path:
        edit = CompactEdit.load(load_path)
        info["loaded_edit"] = str(load_path)
    else:
        result = erase(
            pipe, identity, groups, options, progress=erase_progress, should_cancel=should_cancel
        )
        edit = result.edit
        info["erasure_timings_s"] = {k: round(v, 3) for k, v in result.timings.items()}
        if save_path:
            write_erasure(result, save_path)
            info["saved_to"] = str(save_path)
    info["concepts"] = edit.metadata.get("concepts")
    info["options"] = edit.metadata.get("options")
    models = {"erased": EditedModel(pipe, edit)}
    if tech.get("compare_base"):
        models = {"base": EditedModel(pipe, None), **models}
    return models, info


def _evaluate(
    config, tech, translated, single, seed, models, erasure_info, progress, should_cancel, resources
):
    from .run import run_evaluation
    from .sampling import SamplerSettings

    timestamp = time.time()
    names = [t.name for t in translated]
    payload = json.dumps(
        {
            "technique": "mace",
            "technique_config": tech,
            "metrics": names,
            "metric_configs": [t.config for t in translated],
            "timestamp": timestamp,
        },
        sort_keys=True,
        default=str,
    )
    run_id = hashlib.sha256(payload.encode()).hexdigest()[:8]
    folder = (
        Path(config.get("output_dir", "results"))
        / f"mace_{names[0] if single else 'multi'}_{run_id}"
    )
    sampler = SamplerSettings(
        seed=seed,
        steps=int(tech.get("num_inference_steps", 50)),
        guidance_scale=float(tech.get("guidance_scale", 7.5)),
        batch_size=int(tech.get("batch_size", 4)),
    )
    prompt_sets = {k: v for t in translated for k, v in t.prompt_sets.items()}
    native = run_evaluation(
        models,
        [t.spec for t in translated],
        folder,
        prompt_sets=prompt_sets,
        sampler=sampler,
        progress=progress,
        should_cancel=should_cancel,
        resources=resources,
        model_info={"erased": erasure_info},
        save_images=True,
    )
    report = eval_learn_report(run_id, timestamp, tech, translated, single, native, folder)
    report["mace"] = {
        "erasure": erasure_info,
        "sampler": native["sampler"],
        "seed_rule": native["seed_rule"],
        "versions": native["versions"],
        "report": "report.json",
        "html": "report.html",
    }
    (folder / f"{run_id}_report.json").write_text(json.dumps(report, indent=4, default=str))
    return report, folder


def eval_learn_report(run_id, timestamp, tech, translated, single, native, folder) -> dict:
    """eval-learn's single-runner (`metric`) or multi-runner (`metrics`) report layout."""
    results = {
        t.name: t.to_result(entry["results"]["erased"], entry)
        for t, entry in zip(translated, native["metrics"], strict=True)
    }
    first = translated[0]
    report = {
        "run_id": run_id,
        "timestamp": timestamp,
        "technique_name": "mace",
        "dataset_name": first.dataset.get("source"),
        "dataset_metadata": first.dataset,
        "technique_config": tech,
    }
    if single:
        report["metric_name"] = first.name
        report["metric_config"] = first.config
        report["metric_result"] = results[first.name]
    else:
        report["metric_names"] = [t.name for t in translated]
        report["metric_configs"] = {t.name: t.config for t in translated}
        report["metric_results"] = results
    report["image_paths"] = [
        os.path.join(str(folder), p) for e in native["metrics"] for p in e["images"]["erased"]
    ]
    return report
