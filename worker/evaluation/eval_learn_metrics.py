"""eval-learn's metric entries as this package's metrics, and results in eval-learn's shape.

eval-learn downloads its prompt datasets from the Hugging Face Hub; here they come from a local
file (`prompts_path`) or the local Hugging Face cache, and nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from worker.erasure.errors import ErasureInputError

from .clip_models import DEFAULT_CLIP
from .prompts import read_prompt_file, with_category

# eval-learn's concept -> I2P category; only nudity has a detector here (NudeNet).
I2P_CATEGORY = {
    "nudity": "sexual",
    "violence": "violence",
    "harassment": "harassment",
    "hate": "hate",
    "illegal activity": "illegal activity",
    "self-harm": "self-harm",
    "shocking": "shocking",
}
I2P_REPO, TIFA_REPO, TIFA_FILE = "AIML-TUDA/i2p", "Unlearningltd/datasets", "tifa/tifa_dataset.csv"

REFUSED = {
    "tifa": "TIFA needs a visual question-answering model and its question sets",
    "err": "ERR needs its challenge prompt sets and a second judge model",
    "asr_mma_diffusion": "MMA-Diffusion needs adversarial prompt optimisation against the "
    "text encoder (hours on a GPU)",
    "mma_diffusion": "MMA-Diffusion needs adversarial prompt optimisation (hours on a GPU)",
    "asr_ring_a_bell": "Ring-A-Bell needs its concept-vector prompt search and Q16",
    "asr_p4d": "P4D needs prompt optimisation against an unerased copy of the model",
    "asr_custom": "the custom ASR needs a CLIP threshold detector not implemented here",
    "ccrt": "CCRT needs its genetic prompt search",
}


@dataclass
class TranslatedMetric:
    """One eval-learn metric as run here: our spec, its prompts, and how to report it."""

    name: str
    spec: dict
    prompt_sets: dict
    dataset: dict
    to_result: Callable[[dict, dict], dict]
    config: dict = field(default_factory=dict)


def translate_metric(name: str, config: dict, local: Callable[[str], Path]) -> TranslatedMetric:
    """Our metric for eval-learn's `name`/`config`; `local` resolves a path from the config."""
    if name in REFUSED:
        raise ErasureInputError(
            f"metric {name!r} is not run here: {REFUSED[name]}. Supported: asr_i2p, "
            "clip_score, fid, ua_ira"
        )
    builders = {"asr_i2p": _asr_i2p, "asr": _asr_i2p, "clip_score": _clip_score, "fid": _fid}
    builders["ua_ira"] = _ua_ira
    if name not in builders:
        raise ErasureInputError(
            f"unknown eval-learn metric {name!r}; use one of {sorted(builders)}"
        )
    return builders[name](name, dict(config), local)


def _prompts_or_cache(config, local, repo_id: str, filename: str | None, what: str):
    """Records from `prompts_path`, else a CSV of `repo_id` in the local HF dataset cache."""
    if config.get("prompts_path"):
        path = local(config["prompts_path"])
        return read_prompt_file(path), {"source": str(path)}
    from huggingface_hub import snapshot_download

    try:
        # The cache folder is read now, not when huggingface_hub was imported.
        cache = os.environ.get("HF_HUB_CACHE")
        root = Path(
            snapshot_download(repo_id, repo_type="dataset", local_files_only=True, cache_dir=cache)
        )
    except Exception as exc:  # the hub raises several types for "not cached"
        raise ErasureInputError(
            f"{what} prompts: eval-learn streams them from the Hub ({repo_id}); nothing is "
            f"downloaded here: give prompts_path (a local CSV) in the metric config, or put the "
            f"dataset in the local Hugging Face cache (huggingface-cli download --repo-type "
            f"dataset {repo_id})"
        ) from exc
    files = [root / filename] if filename else sorted(root.rglob("*.csv"))
    files = [f for f in files if f.is_file()]
    if not files:
        raise ErasureInputError(f"{what} prompts: no CSV in the cached {repo_id} at {root}")
    return read_prompt_file(files[0]), {"source": f"hf-cache:{repo_id}", "file": str(files[0])}


def _asr_i2p(name, config, local) -> TranslatedMetric:
    concept = config.get("concept_name", config.get("concept", "nudity"))
    if concept not in I2P_CATEGORY:
        raise ErasureInputError(
            f"asr_i2p concept_name {concept!r}; use one of {list(I2P_CATEGORY)}"
        )
    detector = config.get("detector", "auto")
    if concept != "nudity" or detector not in ("auto", "nudenet"):
        raise ErasureInputError(
            f"asr_i2p for {concept!r} with detector {detector!r} needs the Q16 or CLIP "
            "threshold detector, which is not run here; only nudity with NudeNet is"
        )
    records, dataset = _prompts_or_cache(config, local, I2P_REPO, None, "asr_i2p")
    if any(r.categories for r in records):
        records = with_category(records, I2P_CATEGORY[concept])
    limit = config.get("limit", 500)
    records = records[:limit] if limit else records
    if not records:
        raise ErasureInputError(f"asr_i2p: no I2P prompt of category {I2P_CATEGORY[concept]!r}")
    ours = {"prompts": name}
    for key in ("threshold", "exposed_classes"):
        if key in config:
            ours[key] = config[key]

    def to_result(result, entry):
        details = result["details"]
        return {
            "name": "ASR",
            "value": details["unsafe_images"] / max(details["total_images"], 1),
            "details": {
                "total_images": details["total_images"],
                "unsafe_count": details["unsafe_images"],
                "unsafe_indices": details["unsafe_indices"],
                "concept": concept,
                "prompt_asr": details["asr"],
                "exposed_detections": details["exposed_detections"],
                "exposed_classes": entry["settings"]["exposed_classes"],
                "threshold": entry["settings"]["threshold"],
                "detector": entry["settings"]["model"],
                "config": config,
            },
        }

    return TranslatedMetric(
        name,
        {"name": "nudenet", "config": ours},
        {name: records},
        {**dataset, "total_loaded": len(records)},
        to_result,
        config,
    )


def _clip_score(name, config, local) -> TranslatedMetric:
    records, dataset = _prompts_or_cache(config, local, TIFA_REPO, TIFA_FILE, "clip_score")
    limit = config.get("limit", 300)
    records = records[:limit] if limit else records
    model = config.get("clip_model_name", DEFAULT_CLIP)

    def to_result(result, entry):
        per_image = [s for scores in result["details"]["per_prompt"] for s in scores]
        return {
            "name": "CLIPScore",
            "value": result["value"],
            "details": {
                "per_image_scores": per_image,
                "evaluated": len(per_image),
                "total_images": len(per_image),
                "model": entry["settings"]["model"],
                "config": config,
            },
        }

    spec = {"name": "clip_score", "config": {"prompts": name, "model": model}}
    return TranslatedMetric(
        name, spec, {name: records}, {**dataset, "total_loaded": len(records)}, to_result, config
    )


def _fid(name, config, local) -> TranslatedMetric:
    if not config.get("reference_dir") or not config.get("prompts_path"):
        raise ErasureInputError(
            "fid: eval-learn streams COCO 2017 images and captions from the Hub; here give "
            "reference_dir (a folder of real images) and prompts_path (their captions, one a "
            "line or a CSV) in the metric config, and the Inception weights (inception_path or "
            "MACE_INCEPTION_PATH)"
        )
    records = read_prompt_file(local(config["prompts_path"]))
    limit = config.get("limit", 1000)
    records = records[:limit] if limit else records
    ours = {
        "prompts": name,
        "reference_dir": str(local(config["reference_dir"])),
        "reference_limit": limit,
    }
    if config.get("inception_path"):
        ours["inception_path"] = str(local(config["inception_path"]))

    def to_result(result, entry):
        return {
            "name": "FID",
            "value": result["value"],
            "details": {
                "total_generated": result["details"]["generated_images"],
                "total_real": result["details"]["reference_images"],
                "inception": entry["settings"]["model"],
                "config": config,
            },
        }

    dataset = {"source": ours["reference_dir"], "total_loaded": len(records)}
    return TranslatedMetric(
        name, {"name": "fid", "config": ours}, {name: records}, dataset, to_result, config
    )


def _ua_ira(name, config, local) -> TranslatedMetric:
    for key in ("target_prompts_path", "retain_prompts_path"):
        if not config.get(key):
            raise ErasureInputError(f"ua_ira needs {key}: a CSV of prompts (header row first)")
    sets = {}
    for role in ("target", "retain"):
        records = read_prompt_file(local(config[f"{role}_prompts_path"]))
        limit = config.get(f"{role}_prompt_limit")
        sets[f"{name}:{role}"] = records[:limit] if limit else records
    ours = {
        "target_prompts": f"{name}:target",
        "retain_prompts": f"{name}:retain",
        "target_concept": config.get("target_concept", "target_concept"),
        "retain_concept": config.get("retain_concept", "retain_concept"),
        "clip_model_name": config.get("clip_model_name", DEFAULT_CLIP),
    }

    def to_result(result, entry):
        d = result["details"]
        return {
            "name": "UA_IRA",
            "value": result["value"],
            "details": {
                "ua_score": d["ua"],
                "ira_score": d["ira"],
                **{k: d[k] for k in ("target_correct", "target_total")},
                **{k: d[k] for k in ("retain_correct", "retain_total")},
                "model": entry["settings"]["model"],
                "config": config,
            },
        }

    dataset = {"source": "ua_ira_csv", "total_loaded": sum(len(v) for v in sets.values())}
    return TranslatedMetric(
        name, {"name": "ua_ira", "config": ours}, sets, dataset, to_result, config
    )
