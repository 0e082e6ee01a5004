"""Image generation from the API: resolve the model to a payload, run it on a worker, wait.

The worker (task `mace.generate`, queue `generate`) receives the payload as keyword arguments
and returns `{"images": [base64 PNG, ...], "seconds": float}`.
"""

from __future__ import annotations

from celery.exceptions import TimeoutError as ResultTimeout
from sqlalchemy.orm import Session

from app.artifacts import object_key
from app.broker import ping_broker
from app.catalog.base_models import base_model_by_name
from app.catalog.erased_models import finished_model, get_artifact
from app.dispatch import send
from app.errors import (
    BadGateway,
    Conflict,
    GatewayTimeout,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
)
from app.queue import GENERATE_TASK, QUEUES
from app.schemas.generate import GenerateRequest
from app.storage import LocalStore, S3Store, StorageError

SETTINGS = (
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "width",
    "height",
    "num_images",
)
# Engine errors about the request itself; anything else the worker raises is a 502.
INPUT_ERRORS = {"ErasureInputError", "ModelNotFoundError", "ValueError"}


def generation_payload(db: Session, request: GenerateRequest, store: LocalStore | S3Store) -> dict:
    """The `mace.generate` keyword arguments for a request.

    Raises:
        NotFound: unknown model or base model.
        Conflict: the erased model is still being erased, or has no stored edit.
    """
    edit = None
    if request.model_id is not None:
        model = finished_model(db, request.model_id)
        base = model.base_model
        artifact = get_artifact(db, model.id, "edit")
        if artifact is None:
            raise Conflict(f"erased model {model.id} has no stored edit")
        try:
            edit = {"key": object_key(store, artifact.uri), "sha256": artifact.sha256}
        except StorageError as exc:
            raise Conflict(str(exc)) from exc
    else:
        base = base_model_by_name(db, request.base_model)
        if base is None:
            raise NotFound(f"no base model named {request.base_model!r}")
    return {
        "base": {"name": base.name, "source": base.source, "sha256": base.sha256},
        "edit": edit,
        **request.model_dump(include=set(SETTINGS)),
    }


def run_generation(payload: dict, *, timeout_s: float) -> dict:
    """Send the payload to the generate queue and wait for the images (blocking).

    Raises:
        ServiceUnavailable: the broker is unreachable.
        GatewayTimeout: no answer within `timeout_s`.
        Unprocessable: the worker refused the request as given.
        BadGateway: the worker failed.
    """
    try:
        ping_broker()  # before subscribing to the result, which would retry for long
        result = send(GENERATE_TASK, queue=QUEUES[GENERATE_TASK], kwargs=payload, keep_result=True)
    except Exception as exc:
        raise ServiceUnavailable(
            f"the task broker is unreachable, try again later ({exc})"
        ) from exc
    try:
        outcome = result.get(timeout=timeout_s, propagate=False)
        failed = result.failed()  # read before forget(), which drops the state
    except ResultTimeout as exc:
        raise GatewayTimeout(
            f"no image within {timeout_s:g}s (MACE_GENERATE_TIMEOUT_S); are workers running on "
            "the generate queue?"
        ) from exc
    except Exception as exc:  # the result backend went away while waiting
        raise ServiceUnavailable(f"lost the result backend while waiting ({exc})") from exc
    finally:
        result.forget()
    if failed:
        message = f"{type(outcome).__name__}: {outcome}"
        if type(outcome).__name__ in INPUT_ERRORS:
            raise Unprocessable(str(outcome))
        raise BadGateway(f"generation failed on the worker: {message}")
    return outcome
