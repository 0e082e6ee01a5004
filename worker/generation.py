"""Images from a base or erased model, on the worker's warm pipeline of the base."""

from __future__ import annotations

import base64
import io
import time

from worker import runtime
from worker.erasure.errors import ErasureInputError
from worker.erasure.generate import generate_images


def generate(payload: dict) -> dict:
    """`{"images": [base64 PNG, ...], "seconds": float}` for one generation request.

    Args:
        payload: `{"base": {"name", "source", "sha256"}, "edit": None | {"key", "sha256"},
            "prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale",
            "width", "height", "num_images"}`; missing settings take `generate_images`' defaults.
    """
    started = time.perf_counter()
    base, edit_ref = payload["base"], payload.get("edit")
    edit = runtime.edits().get(edit_ref["key"], edit_ref["sha256"]) if edit_ref else None
    made_from = (edit.metadata.get("base_model") or {}).get("sha256") if edit else None
    if made_from and made_from != base["sha256"]:
        raise ErasureInputError("this erased model was made from another base model")
    settings = {
        name: payload[name]
        for name in (
            "negative_prompt",
            "seed",
            "num_inference_steps",
            "guidance_scale",
            "width",
            "height",
            "num_images",
        )
        if payload.get(name) is not None
    }
    with runtime.pipelines().use(base["source"], base["sha256"], edit) as pipe:
        images = generate_images(pipe, payload["prompt"], **settings)
    return {
        "images": [_png_base64(image) for image in images],
        "seconds": round(time.perf_counter() - started, 3),
    }


def _png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
