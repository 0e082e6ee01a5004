"""An evaluation run: draw each prompt's images once per model, score them with every metric,
and write report.json, the comparison grid PNG(s) and a self-contained report.html."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from worker.erasure.errors import ErasureCancelled, ErasureInputError

from .metric_base import MetricContext
from .metrics import build_metrics
from .prompts import PromptRecord
from .report_html import render_report_html
from .resources import EvaluationResources
from .sampling import EditedModel, SamplerSettings, activate, generate_for_requests, image_request
from .versions import evaluation_versions

REPORT_FORMAT = "mace-evaluation/1"
Progress = Callable[[int, int], None]


def run_evaluation(
    models: Mapping[str, object],
    metrics: Sequence[Mapping],
    out_dir: str | Path,
    *,
    prompt_sets: Mapping[str, Sequence[PromptRecord | str]] | None = None,
    sampler: SamplerSettings | None = None,
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resources: EvaluationResources | None = None,
    model_info: Mapping[str, dict] | None = None,
    allow_paths: bool = True,
    save_images: bool = False,
) -> dict:
    """Evaluate already-loaded models and write the report files into `out_dir`.

    Args:
        models: label -> a `StableDiffusionPipeline`, or an `EditedModel(pipe, edit)` so that
            labels can share one pipeline (e.g. {"base": EditedModel(p, None),
            "erased": EditedModel(p, edit)}). Columns of tables and grids follow this order.
        metrics: [{"name": ..., "config": {...}}]; names: nudenet, clip_score, clip_accuracy,
            fid, ua_ira, image_grid.
        out_dir: folder for report.json, grid PNG(s) and report.html (created if missing).
        prompt_sets: named prompt sets metric configs can refer to; "default" (or the only
            set) is used by metrics whose config names no prompts.
        sampler: seed, steps, guidance, size, images per prompt, batch size.
        progress: called with (done, total) work units (one per image, one per metric score).
        should_cancel: polled between batches and metrics; `ErasureCancelled` when True.
        resources: the CLIP / NudeNet / Inception loaders (default: offline loaders).
        model_info: label -> what to record about that model (name, hash, edit, ...).
        allow_paths: whether metric configs may name files on this machine (False for
            requests from the service).
        save_images: also write every image a metric scored to
            images/<label>/<metric>/<group>/<prompt>_<k>.png, listed in its entry's "images".

    Returns:
        The report (also written to report.json): settings, per-metric results per model
        label, the model sources, thresholds, prompts and seeds used.
    """
    if not models:
        raise ErasureInputError("give at least one model to evaluate")
    sampler = (sampler or SamplerSettings()).validate()
    resources = resources or EvaluationResources()
    sets = {
        name: [p if isinstance(p, PromptRecord) else PromptRecord(str(p)) for p in prompts]
        for name, prompts in (prompt_sets or {}).items()
    }
    default = "default" if "default" in sets else (next(iter(sets)) if len(sets) == 1 else None)
    built = build_metrics(metrics, MetricContext(sets, default, allow_paths))
    started = time.time()
    tracker = _Tracker(progress, should_cancel)
    requests = {
        image_request(r, sampler): None
        for _, metric in built
        for group in metric.prompt_groups().values()
        for r in group
    }
    scored = sum(1 for _, m in built if not hasattr(m, "compose")) * len(models)
    tracker.total = len(models) * len(requests) * sampler.images_per_prompt + scored
    images = _generate(models, list(requests), sampler, tracker)
    entries, grids = _score(built, models, images, sampler, resources, tracker)
    if save_images:
        _save_images(entries, built, images, sampler, Path(out_dir))
    report = {
        "format": REPORT_FORMAT,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 3),
        "models": {label: _model_record(label, models[label], model_info) for label in models},
        "sampler": sampler.to_dict(),
        "seed_rule": "image k of a prompt starts from CPU noise seeded with (prompt seed + k); "
        "a prompt's seed is its evaluation_seed column, else the sampler seed",
        "metrics": entries,
        "summary": _summary(entries),
        "versions": evaluation_versions(),
    }
    write_report(report, grids, out_dir)
    return report


def _summary(entries: list[dict]) -> dict:
    """Headline value per metric and label; a repeated metric name gets "#2", "#3", ..."""
    summary: dict = {}
    for entry in entries:
        if "all" in entry["results"]:
            continue
        key, n = entry["name"], 1
        while key in summary:
            n += 1
            key = f"{entry['name']}#{n}"
        summary[key] = {label: r["value"] for label, r in entry["results"].items()}
    return summary


class _Tracker:
    def __init__(self, progress, should_cancel):
        self.progress = progress
        self.should_cancel = should_cancel
        self.done = 0
        self.total = 0

    def advance(self, units: int) -> None:
        self.done += units
        if self.progress:
            self.progress(self.done, self.total)

    def check(self) -> None:
        if self.should_cancel and self.should_cancel():
            raise ErasureCancelled("the evaluation was cancelled")


def _generate(models, requests, sampler, tracker) -> dict:
    """label -> {ImageRequest: [images]}; pipelines shared via EditedModel are left as found."""
    from worker.erasure.edit import EditedUnet

    shared = {id(m.pipe): m.pipe for m in models.values() if isinstance(m, EditedModel)}
    before = {key: EditedUnet.of(pipe.unet).applied for key, pipe in shared.items()}
    images = {}
    try:
        for label, model in models.items():
            images[label] = generate_for_requests(
                activate(model),
                requests,
                sampler,
                on_image=tracker.advance,
                should_cancel=tracker.should_cancel,
            )
    finally:
        for key, pipe in shared.items():
            EditedModel(pipe, before[key]).activate()
    return images


def _score(built, models, images, sampler, resources, tracker):
    entries, grids = [], {}
    for spec, metric in built:
        groups = metric.prompt_groups()
        per_label = {
            label: {
                name: [images[label][image_request(r, sampler)] for r in records]
                for name, records in groups.items()
            }
            for label in models
        }
        entry = {"name": spec["name"], "config": spec["config"], "results": {}}
        if hasattr(metric, "compose"):
            tracker.check()
            file = "grid.png" if not grids else f"grid-{len(grids) + 1}.png"
            grids[file] = metric.compose(per_label)
            entry["results"] = {"all": {"file": file, "columns": list(models)}}
        else:
            for label in models:
                tracker.check()
                entry["results"][label] = metric.evaluate(per_label[label], resources)
                tracker.advance(1)
        entry["settings"] = metric.describe()
        entry["sampled"] = {
            name: [_sampled(r, sampler) for r in records] for name, records in groups.items()
        }
        entries.append(entry)
    return entries, grids


def _save_images(entries, built, images, sampler, out: Path) -> None:
    for number, (entry, (_, metric)) in enumerate(zip(entries, built, strict=True)):
        entry["images"] = {}
        for label, by_request in images.items():
            paths = entry["images"][label] = []
            for group, records in metric.prompt_groups().items():
                folder = out / "images" / label / f"{number:02d}-{entry['name']}" / group
                folder.mkdir(parents=True, exist_ok=True)
                for p, record in enumerate(records):
                    for k, image in enumerate(by_request[image_request(record, sampler)]):
                        image.save(folder / f"{p:04d}_{k}.png")
                        paths.append(str((folder / f"{p:04d}_{k}.png").relative_to(out)))


def _sampled(record: PromptRecord, sampler: SamplerSettings) -> dict:
    request = image_request(record, sampler)
    return {
        "prompt": request.text,
        "seeds": request.seeds(sampler.images_per_prompt),
        "guidance": request.guidance,
    }


def _model_record(label: str, model, model_info) -> dict:
    record = dict((model_info or {}).get(label) or {})
    edit = getattr(model, "edit", None) if isinstance(model, EditedModel) else None
    if edit is not None and "edit" not in record:
        meta = edit.metadata
        record["edit"] = {
            "base_model": meta.get("base_model"),
            "concepts": meta.get("concepts"),
            "seed": meta.get("seed"),
        }
    record.setdefault("label", label)
    return record


def write_report(report: dict, grids: Mapping, out_dir: str | Path) -> Path:
    """report.json, the grid PNGs and report.html (grids inlined) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, image in grids.items():
        image.save(out / name)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_plain))
    (out / "report.html").write_text(render_report_html(report, grids), encoding="utf-8")
    return out


def _plain(value):
    """numpy scalars and tuples that slip into results, as JSON values."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
