"""`/evaluations`: score catalogued models with metrics, follow the job, read its report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import HTMLResponse

from app.artifacts import object_key
from app.catalog import evaluations
from app.dispatch import send_evaluation
from app.errors import Conflict, NotFound
from app.schemas.common import Limit, Offset
from app.schemas.erasures import JobStatus
from app.schemas.evaluations import EvaluationCreate, EvaluationJobPublic, EvaluationJobsPublic
from app.storage import StorageError

from .deps import OperatorKey, SessionDep, StoreDep, ViewerKey
from .submissions import answer_submission, checked_idempotency_key

router = APIRouter(prefix="/evaluations", tags=["evaluations"])


@router.post(
    "",
    status_code=202,
    response_model=EvaluationJobPublic,
    responses={
        200: {"description": "a replay of an earlier submission with the same Idempotency-Key"},
        409: {"description": "the Idempotency-Key was used for another request"},
    },
)
def submit_evaluation(
    body: EvaluationCreate,
    db: SessionDep,
    key: OperatorKey,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> EvaluationJobPublic:
    """Queue an evaluation of erased models (and, by default, their base) with the given
    metrics. Follow it at the `Location` header; the report is at `/evaluations/{id}/report`."""
    submission = evaluations.submit_evaluation(
        db,
        request=body,
        api_key_id=key.id,
        idempotency_key=checked_idempotency_key(idempotency_key),
    )
    job = answer_submission(db, submission, response, send=send_evaluation, location="/evaluations")
    return EvaluationJobPublic.model_validate(job)


@router.get("", response_model=EvaluationJobsPublic)
def list_evaluations(
    db: SessionDep,
    _key: ViewerKey,
    status: JobStatus | None = None,
    offset: Annotated[Offset, Query()] = 0,
    limit: Annotated[Limit, Query()] = 50,
) -> EvaluationJobsPublic:
    """Evaluation jobs, newest first, optionally only those with `status`."""
    page, count = evaluations.list_evaluations(db, status=status, offset=offset, limit=limit)
    return EvaluationJobsPublic(
        data=[EvaluationJobPublic.model_validate(j) for j in page], count=count
    )


@router.get("/{job_id}", response_model=EvaluationJobPublic)
def read_evaluation(job_id: str, db: SessionDep, _key: ViewerKey) -> EvaluationJobPublic:
    """Status, stage, progress; once succeeded, each metric's value per model and the report
    files."""
    return EvaluationJobPublic.model_validate(evaluations.get_evaluation(db, job_id))


@router.post("/{job_id}/cancel", response_model=EvaluationJobPublic)
def cancel_evaluation(
    job_id: str, db: SessionDep, _key: OperatorKey, response: Response
) -> EvaluationJobPublic:
    """Cancel a queued evaluation at once (200), or ask a running one to stop (202)."""
    job = evaluations.cancel_evaluation(db, job_id)
    if job.status == "running":
        response.status_code = 202
    return EvaluationJobPublic.model_validate(job)


@router.get("/{job_id}/report", response_class=HTMLResponse)
def read_report(job_id: str, db: SessionDep, store: StoreDep, _key: ViewerKey) -> HTMLResponse:
    """The evaluation's self-contained HTML page: grids, the metric table, the settings."""
    job = evaluations.get_evaluation(db, job_id)
    pages = sorted(name for name in job.artifacts if name.split("/")[-1] == "report.html")
    stored = job.artifacts[min(pages, key=len)] if pages else None  # an experiment nests it
    if job.status != "succeeded" or stored is None:
        raise Conflict(f"evaluation {job_id} is {job.status}; its report exists once it succeeded")
    try:
        with store.open(object_key(store, stored["uri"])) as stream:
            return HTMLResponse(stream.read())
    except (OSError, StorageError) as exc:
        raise NotFound(f"the stored report of evaluation {job_id} is missing") from exc
