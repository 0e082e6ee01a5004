"""Evaluation jobs from the API's side: submission (models resolved to catalog records, prompt
sets checked), listing, reading, cancelling, and the metrics recorded per erased model."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidField, NotFound
from app.schemas.erasures import request_sha256
from app.schemas.evaluations import EvaluationCreate
from app.schemas.experiments import ExperimentCreate

from . import jobs
from .base_models import base_model_by_name
from .erased_models import finished_model, get_model
from .models import BaseModel, EvaluationJob, Metric, PromptSet
from .submissions import Submission, commit_new_job, earlier_submission, scoped_key

DEFAULT_EXPERIMENT_MODEL = "CompVis/stable-diffusion-v1-4"  # eval-learn's default


def submit_evaluation(
    db: Session, *, request: EvaluationCreate, api_key_id: str, idempotency_key: str | None = None
) -> Submission:
    """Insert a queued evaluation job and commit it (or return an earlier idempotent one).

    The stored request names each model by catalog id, with the label its report columns use:
    `[{"label", "kind": "base" | "erased", "id"}]`, the shared base first when compared with.

    Raises:
        InvalidField: an unknown model or prompt set, or models of different base models.
        Conflict: an erased model whose erasure has not succeeded; the idempotency key reused.
    """
    normalised = request.normalised()
    digest = request_sha256(normalised)
    key = scoped_key(api_key_id, idempotency_key)
    if earlier := earlier_submission(db, EvaluationJob, key, digest, idempotency_key):
        return earlier
    normalised["models"] = _resolve_models(db, request)
    for name, ref in request.prompt_sets.items():
        if isinstance(ref, str) and db.get(PromptSet, ref) is None:
            raise InvalidField(
                ["body", "prompt_sets", name],
                f"no prompt set {ref!r}; upload one with POST /prompt-sets or give the prompts "
                "inline as a list",
            )
    job = EvaluationJob(
        status="queued",
        dispatched=False,
        request=normalised,
        request_sha256=digest,
        idempotency_key=key,
        api_key_id=api_key_id,
    )
    return commit_new_job(db, job, idempotency_key)


def _resolve_models(db: Session, request: EvaluationCreate) -> list[dict]:
    resolved, bases = [], set()
    for index, ref in enumerate(request.models):
        base = base_model_by_name(db, ref)
        if base is not None:
            resolved.append({"label": base.name, "kind": "base", "id": base.id})
            bases.add(base.id)
            continue
        try:
            model = finished_model(db, ref)
        except NotFound as exc:
            raise InvalidField(
                ["body", "models", index],
                f"no base model named {ref!r} and no erased model with that id",
            ) from exc
        resolved.append({"label": model.name or model.id, "kind": "erased", "id": model.id})
        bases.add(model.base_model_id)
    if len(bases) > 1:
        raise InvalidField(
            ["body", "models"],
            "evaluate models of one base model together (one pipeline is shared); submit one "
            "evaluation per base model",
        )
    base_id = bases.pop()
    if request.compare_with_base and not any(m["kind"] == "base" for m in resolved):
        base = db.get(BaseModel, base_id)
        resolved.insert(0, {"label": base.name, "kind": "base", "id": base.id})
    labels = [m["label"] for m in resolved]
    for model in resolved:  # two erased models named alike: tell them apart by id
        if labels.count(model["label"]) > 1:
            model["label"] = f"{model['label']} ({model['id'][:8]})"
    return resolved


def list_evaluations(
    db: Session, *, status: str | None = None, offset: int = 0, limit: int = 50
) -> tuple[list[EvaluationJob], int]:
    """A page of evaluation jobs, newest first, and how many match in all."""
    return jobs.page(db, EvaluationJob, status=status, offset=offset, limit=limit)


def get_evaluation(db: Session, job_id: str) -> EvaluationJob:
    """The evaluation job `job_id`; raises NotFound."""
    return jobs.get_job(db, EvaluationJob, job_id, noun="evaluation job")


def cancel_evaluation(db: Session, job_id: str) -> EvaluationJob:
    """Cancel a queued evaluation now, or ask its worker to stop at its next step."""
    return jobs.cancel(db, EvaluationJob, job_id, noun="evaluation job")


def model_metrics(db: Session, model_id: str) -> list[Metric]:
    """Every metric recorded for an erased model, newest first; raises NotFound."""
    get_model(db, model_id)
    return list(
        db.scalars(
            select(Metric)
            .where(Metric.model_id == model_id)
            .order_by(Metric.created_at.desc(), Metric.id.desc())
        )
    )


def submit_experiment(
    db: Session, *, request: ExperimentCreate, api_key_id: str, idempotency_key: str | None = None
) -> Submission:
    """Queue an eval-learn experiment (a MACE erasure, then its metrics) as an evaluation job.

    The stored request is `{"experiment": config, "base_model_id", "load_model_id"}`: the config
    as sent, with `model_id` and `load_path` resolved to catalog ids here.

    Raises:
        InvalidField: `model_id` is not a registered base model, `load_path` not an erased
            model, or a `prompt_set` does not exist.
    """
    config = request.config()
    digest = request_sha256(config)
    key = scoped_key(api_key_id, idempotency_key)
    if earlier := earlier_submission(db, EvaluationJob, key, digest, idempotency_key):
        return earlier
    technique = config["technique"].get("config", {})
    name = str(technique.get("model_id", DEFAULT_EXPERIMENT_MODEL))
    base = base_model_by_name(db, name)
    if base is None:
        raise InvalidField(
            ["body", "technique", "config", "model_id"],
            f"no base model named {name!r}; an admin registers it with `mace base-models add "
            f"{name} PATH_OR_HF_ID`, or name a registered one",
        )
    load_model_id = None
    if technique.get("load_path"):
        try:
            loaded = finished_model(db, str(technique["load_path"]))
        except NotFound as exc:
            raise InvalidField(
                ["body", "technique", "config", "load_path"],
                "give the id of a catalogued erased model to evaluate instead of erasing",
            ) from exc
        if loaded.base_model_id != base.id:
            raise InvalidField(
                ["body", "technique", "config", "load_path"],
                f"erased model {loaded.id} was made from another base model than {name!r}",
            )
        load_model_id = loaded.id
    metrics = config.get("metrics") or [config["metric"]]
    for index, metric in enumerate(metrics):
        prompt_set = metric.get("config", {}).get("prompt_set")
        if prompt_set is not None and db.get(PromptSet, str(prompt_set)) is None:
            raise InvalidField(
                ["body", "metrics", index, "config", "prompt_set"],
                f"no prompt set {prompt_set!r}; upload one with POST /prompt-sets",
            )
    job = EvaluationJob(
        status="queued",
        dispatched=False,
        request={"experiment": config, "base_model_id": base.id, "load_model_id": load_model_id},
        request_sha256=digest,
        idempotency_key=key,
        api_key_id=api_key_id,
    )
    return commit_new_job(db, job, idempotency_key)
