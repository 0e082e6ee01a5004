"""`/experiments`: eval-learn experiment configurations, run as evaluation jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from app.catalog import evaluations
from app.dispatch import send_evaluation
from app.schemas.evaluations import EvaluationJobPublic
from app.schemas.experiments import ExperimentCreate

from .deps import OperatorKey, SessionDep
from .submissions import answer_submission, checked_idempotency_key

router = APIRouter(prefix="/experiments", tags=["evaluations"])


@router.post(
    "",
    status_code=202,
    response_model=EvaluationJobPublic,
    responses={200: {"description": "a replay of an earlier submission (Idempotency-Key)"}},
)
def submit_experiment(
    body: ExperimentCreate,
    db: SessionDep,
    key: OperatorKey,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> EvaluationJobPublic:
    """Run an eval-learn configuration: a three-stage MACE erasure of `erase_concept`, then its
    metrics. Follow it at `Location` (an evaluation job); `report` holds eval-learn's report."""
    submission = evaluations.submit_experiment(
        db,
        request=body,
        api_key_id=key.id,
        idempotency_key=checked_idempotency_key(idempotency_key),
    )
    job = answer_submission(db, submission, response, send=send_evaluation, location="/evaluations")
    return EvaluationJobPublic.model_validate(job)
