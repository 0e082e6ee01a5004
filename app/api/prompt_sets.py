"""`/prompt-sets`: upload prompts (JSON, a text file or a CSV) and read them back."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.catalog import prompt_sets
from app.errors import InvalidField
from app.prompt_files import prompts_from_file
from app.schemas.common import Limit, Offset
from app.schemas.prompt_sets import (
    PromptSetCreate,
    PromptSetPublic,
    PromptSetsPublic,
    PromptSetSummary,
)

from .deps import OperatorKey, SessionDep, ViewerKey

router = APIRouter(prefix="/prompt-sets", tags=["prompt sets"])

_UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "UTF-8 text, one prompt per line; or a CSV with a 'prompt' column",
        },
        "name": {"type": "string", "description": "default: the file's name"},
        "purpose": {"type": "string", "enum": ["preservation", "evaluation"]},
    },
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": PromptSetCreate.model_json_schema()},
        "multipart/form-data": {"schema": _UPLOAD_SCHEMA},
    },
}


@router.post(
    "",
    status_code=201,
    response_model=PromptSetPublic,
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def create_prompt_set(request: Request, db: SessionDep, _key: OperatorKey) -> PromptSetPublic:
    """Store a prompt set from JSON `{name, prompts, purpose}` or a multipart upload (`file`,
    optional `name` and `purpose`). Answers its id, count and sha256."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        data = await _from_upload(request)
    else:
        data = _validated(await _json_body(request))
    record = await run_in_threadpool(prompt_sets.create_prompt_set, db, data=data)
    return PromptSetPublic.from_set(record)


async def _json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidField(
            ["body"], f"send JSON {{name, prompts, purpose}} or a multipart upload ({exc})"
        ) from exc


async def _from_upload(request: Request) -> PromptSetCreate:
    async with request.form(max_files=1, max_fields=8) as form:  # closes the spooled file
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidField(["body", "file"], "attach the prompts as a file field named 'file'")
        filename = upload.filename or "prompts.txt"
        prompts = prompts_from_file(
            await upload.read(), filename=filename, content_type=upload.content_type
        )
        name = form.get("name") or filename.rsplit("/", 1)[-1]
        return _validated({"name": name, "prompts": prompts, "purpose": form.get("purpose")})


def _validated(data: object) -> PromptSetCreate:
    if isinstance(data, dict) and data.get("purpose") is None:
        data = {k: v for k, v in data.items() if k != "purpose"}
    try:
        return PromptSetCreate.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from exc


@router.get("", response_model=PromptSetsPublic)
def list_prompt_sets(
    db: SessionDep,
    _key: ViewerKey,
    offset: Annotated[Offset, Query()] = 0,
    limit: Annotated[Limit, Query()] = 50,
) -> PromptSetsPublic:
    """Prompt sets, newest first, without their prompts."""
    page, count = prompt_sets.list_prompt_sets(db, offset=offset, limit=limit)
    data = [PromptSetSummary.from_record(record, count=size) for record, size in page]
    return PromptSetsPublic(data=data, count=count)


@router.get("/{prompt_set_id}", response_model=PromptSetPublic)
def read_prompt_set(prompt_set_id: str, db: SessionDep, _key: ViewerKey) -> PromptSetPublic:
    """A prompt set with its prompts."""
    return PromptSetPublic.from_set(prompt_sets.get_prompt_set(db, prompt_set_id))
