"""One evaluation job: claim the row -> load the shared base and each erased model's edit ->
`run_evaluation` -> upload the report files -> in one transaction: a metric row per erased model
and metric, and the job's `succeeded` with the summary."""

from __future__ import annotations

import copy
import csv
import logging
import tempfile
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.artifacts import object_key
from app.catalog import jobs
from app.catalog.db import session_factory
from app.catalog.models import Artifact, BaseModel, ErasedModel, EvaluationJob, Metric, PromptSet
from app.catalog.models import now as utc_now
from app.settings import get_settings
from worker import runtime
from worker.erasure.errors import ErasureCancelled, ErasureInputError
from worker.job_claim import not_claimed
from worker.job_lease import JobLease
from worker.job_run import JobRun
from worker.model_records import put_verified

logger = logging.getLogger(__name__)

STAGE_WEIGHTS = {"load": 0.05, "evaluate": 0.9, "upload": 0.05}
EXPERIMENT_WEIGHTS = {"erase": 0.6, "evaluate": 0.35, "upload": 0.05}


def run_evaluation_job(job_id: str) -> dict:
    """Run evaluation job `job_id` if it can be claimed; returns `{"status": ...}`.

    Raises `JobHeld` when another worker holds a live lease on it, and database errors as they
    come (the task retries them).
    """
    settings = get_settings()
    worker, lease = runtime.worker_name(), timedelta(seconds=settings.JOB_LEASE_S)
    with session_factory()() as db:
        job = jobs.claim(db, job_id, worker=worker, lease=lease, table=EvaluationJob)
        if job is None:
            return not_claimed(db, job_id, lease, table=EvaluationJob)
        try:
            experiment = "experiment" in job.request
            plan = (_ExperimentPlan if experiment else _EvaluationPlan).of(db, job)
        except ErasureInputError as exc:
            jobs.finish(
                db, job_id, worker=worker, status="failed", error=str(exc), table=EvaluationJob
            )
            return {"status": "failed", "error": str(exc)}
    logger.info("evaluation %s: attempt %d on %s", job_id, job.attempts, worker)
    with JobLease(
        job_id,
        worker,
        stages=(),
        lease_s=lease.total_seconds(),
        weights=EXPERIMENT_WEIGHTS if experiment else STAGE_WEIGHTS,
        table=EvaluationJob,
    ) as held:
        return _EvaluationRun(job, plan, held).run()


class _EvaluationPlan:
    """What the stored request names, looked up in the catalog."""

    def __init__(self, base: BaseModel, models: list[dict], prompt_sets: dict[str, list[str]]):
        self.base, self.models, self.prompt_sets = base, models, prompt_sets

    @classmethod
    def of(cls, db: Session, job: EvaluationJob) -> _EvaluationPlan:
        models, bases = [], set()
        for ref in job.request["models"]:
            entry = {"label": ref["label"], "kind": ref["kind"], "id": ref["id"], "edit": None}
            if ref["kind"] == "base":
                bases.add(ref["id"])
            else:
                model = db.get(ErasedModel, ref["id"])
                edit = db.scalar(
                    select(Artifact).where(Artifact.model_id == ref["id"], Artifact.kind == "edit")
                )
                if model is None or edit is None:
                    raise ErasureInputError(f"erased model {ref['id']} is gone or has no edit")
                bases.add(model.base_model_id)
                entry["edit"] = {"uri": edit.uri, "sha256": edit.sha256}
            models.append(entry)
        base = db.get(BaseModel, bases.pop()) if len(bases) == 1 else None
        if base is None:
            raise ErasureInputError("the models of an evaluation must share one base model")
        prompt_sets = {}
        for name, ref in job.request.get("prompt_sets", {}).items():
            if isinstance(ref, list):
                prompt_sets[name] = list(ref)
                continue
            stored = db.get(PromptSet, ref)
            if stored is None:
                raise ErasureInputError(f"prompt set {ref} no longer exists")
            prompt_sets[name] = list(stored.prompts)
        return cls(base, models, prompt_sets)


class _ExperimentPlan:
    """An eval-learn experiment: its base model, the erased model to load instead of erasing,
    and the uploaded prompt sets its metrics name."""

    def __init__(self, base: BaseModel, loaded_edit: dict | None, prompt_sets: dict[str, list]):
        self.base, self.loaded_edit, self.prompt_sets = base, loaded_edit, prompt_sets

    @classmethod
    def of(cls, db: Session, job: EvaluationJob) -> _ExperimentPlan:
        base = db.get(BaseModel, job.request["base_model_id"])
        if base is None:
            raise ErasureInputError("the experiment's base model is no longer registered")
        loaded = None
        if job.request.get("load_model_id"):
            edit = db.scalar(
                select(Artifact).where(
                    Artifact.model_id == job.request["load_model_id"], Artifact.kind == "edit"
                )
            )
            if edit is None:
                raise ErasureInputError("the erased model to load has no stored edit")
            loaded = {"uri": edit.uri, "sha256": edit.sha256}
        config = job.request["experiment"]
        prompt_sets = {}
        for metric in config.get("metrics") or [config["metric"]]:
            ref = (metric.get("config") or {}).get("prompt_set")
            if ref is not None:
                stored = db.get(PromptSet, str(ref))
                if stored is None:
                    raise ErasureInputError(f"prompt set {ref} no longer exists")
                prompt_sets[str(ref)] = list(stored.prompts)
        return cls(base, loaded, prompt_sets)


class _EvaluationRun(JobRun):
    table, noun, stored_what = EvaluationJob, "evaluation", "the report"

    def __init__(self, job: EvaluationJob, plan: _EvaluationPlan, lease: JobLease):
        super().__init__(job, lease)
        self.plan = plan

    def work(self) -> dict:
        with tempfile.TemporaryDirectory(prefix="mace-evaluation-") as scratch:
            report = self.evaluate(Path(scratch))
            if self.lease.should_cancel():
                raise ErasureCancelled("the evaluation was cancelled")
            stored = self.upload(Path(scratch))
        return self.publish(report, stored)

    def evaluate(self, out_dir: Path) -> dict:
        if isinstance(self.plan, _ExperimentPlan):
            return self.experiment(out_dir)
        from worker.evaluation.run import run_evaluation
        from worker.evaluation.sampling import EditedModel, SamplerSettings

        self.lease.progress("load", 0.0)
        edits = {
            m["label"]: runtime.edits().get(
                object_key(self.store, m["edit"]["uri"]), m["edit"]["sha256"]
            )
            for m in self.plan.models
            if m["edit"]
        }
        request = self.job.request
        sampler = request["sampler"]
        settings = SamplerSettings(
            seed=request["seed"],
            steps=sampler["num_inference_steps"],
            guidance_scale=sampler["guidance_scale"],
            width=sampler["width"],
            height=sampler["height"],
            images_per_prompt=sampler["images_per_prompt"],
            batch_size=sampler["batch_size"],
        )
        base = self.plan.base
        with runtime.pipelines().use(base.source, base.sha256) as pipe:
            self.lease.progress("load", 1.0)
            models = {
                m["label"]: EditedModel(pipe, edits.get(m["label"])) for m in self.plan.models
            }
            info = {
                m["label"]: {"kind": m["kind"], "id": m["id"], "base_model": base.name}
                for m in self.plan.models
            }
            return run_evaluation(
                models,
                request["metrics"],
                out_dir / "report",
                prompt_sets=self.plan.prompt_sets,
                sampler=settings,
                progress=lambda done, total: self.lease.progress("evaluate", done / max(total, 1)),
                should_cancel=self.lease.should_cancel,
                model_info=info,
                allow_paths=False,
            )

    def experiment(self, out_dir: Path) -> dict:
        """eval-learn's runner on this job's config; server paths are made here, never sent."""
        from worker.evaluation.eval_learn import run_experiment

        config = copy.deepcopy(self.job.request["experiment"])
        config["output_dir"] = str(out_dir / "report")
        technique = config["technique"].setdefault("config", {})
        technique["model_id"] = self.plan.base.name
        if self.plan.loaded_edit:
            path = out_dir / "loaded" / "edit.safetensors"
            path.parent.mkdir(parents=True)
            stored = self.plan.loaded_edit
            runtime.download(object_key(self.store, stored["uri"]), path, stored["sha256"])
            technique["load_path"] = str(path)
        if technique.get("save_path"):
            technique["save_path"] = str(out_dir / "report" / "erasure")
        for metric in config.get("metrics") or [config["metric"]]:
            settings = metric.setdefault("config", {})
            if "prompt_set" in settings:
                prompts = self.plan.prompt_sets[str(settings.pop("prompt_set"))]
                settings["prompts_path"] = str(_prompt_csv(out_dir / "prompt-sets", prompts))
        report, _folder = run_experiment(
            config,
            resolve_model=lambda _name: self.plan.base.source,
            progress=lambda done, total: self.lease.progress("evaluate", done / max(total, 1)),
            erase_progress=lambda _stage, fraction: self.lease.progress("erase", fraction * 0.99),
            should_cancel=self.lease.should_cancel,
        )
        return {"eval_learn": report}

    def load_edit(self, stored: dict):
        return runtime.edits().get(object_key(self.store, stored["uri"]), stored["sha256"])

    def upload(self, scratch: Path) -> dict:
        self.lease.progress("upload", 0.0)
        folder = scratch / "report"
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        stored = {}
        for done, path in enumerate(files, start=1):
            relative = path.relative_to(folder).as_posix()
            key = f"evaluations/{self.job.id}/{relative}"
            result = self.with_retries(
                lambda key=key, path=path: put_verified(self.store, key, path),
                what=f"upload of {key}",
            )
            stored[relative] = {"uri": result.uri, "bytes": result.bytes, "sha256": result.sha256}
            self.lease.progress("upload", done / len(files))
        return stored

    def publish(self, report: dict, stored: dict) -> dict:
        summary = (
            report
            if "eval_learn" in report
            else {
                "summary": report.get("summary", {}),
                "models": report.get("models", {}),
                "sampler": report.get("sampler", {}),
            }
        )
        erased = {}
        if isinstance(self.plan, _EvaluationPlan):
            erased = {m["label"]: m["id"] for m in self.plan.models if m["kind"] == "erased"}
        with session_factory()() as db:
            result = db.execute(
                update(EvaluationJob)
                .where(
                    EvaluationJob.id == self.job.id,
                    EvaluationJob.status == "running",
                    EvaluationJob.worker == self.lease.worker,
                )
                .values(
                    status="succeeded",
                    finished_at=utc_now(),
                    progress=1.0,
                    stage_timings=dict(self.lease.timings),
                    report=summary,
                    artifacts=stored,
                    error=None,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                db.rollback()
                logger.warning("evaluation %s: lost ownership before recording", self.job.id)
                return {"status": "lost"}
            db.add_all(_metric_rows(self.job.id, report, erased))
            db.commit()
        logger.info("evaluation %s: succeeded (%d files)", self.job.id, len(stored))
        return {"status": "succeeded"}


def _prompt_csv(folder: Path, prompts: list[str]) -> Path:
    """An uploaded prompt set as the CSV (a `prompt` column) eval-learn's metrics read."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"prompts-{len(list(folder.iterdir()))}.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["prompt"])
        writer.writerows([p] for p in prompts)
    return path


def _metric_rows(evaluation_id: str, report: dict, erased: dict[str, str]) -> list[Metric]:
    """One row per erased model and scored metric: its headline value, and in `details` the
    config and the figures behind it (the full report stays in report.json)."""
    rows = []
    for entry in report.get("metrics", []):
        for label, result in entry.get("results", {}).items():
            if label not in erased or not isinstance(result, dict):
                continue
            value = result.get("value")
            rows.append(
                Metric(
                    model_id=erased[label],
                    name=entry["name"],
                    value=float(value) if isinstance(value, int | float) else None,
                    details={
                        "label": label,
                        "config": entry.get("config", {}),
                        "details": result.get("details", {}),
                    },
                    evaluation_id=evaluation_id,
                )
            )
    return rows
