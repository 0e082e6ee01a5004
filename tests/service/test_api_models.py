"""`/models`: lineage, and artifact downloads from S3 (presigned redirect) or a local folder,
with exports made on first request."""

from __future__ import annotations

import base64
import hashlib
import json

import httpx

from app.api.deps import get_store
from app.settings import get_settings
from tests.service.api_support import broker


def stored_edit(api, model_id: str, content: bytes = b"edit-bytes", kind: str = "edit"):
    source = get_settings().DATA_DIR / f"{model_id}-{kind}.bin"
    source.write_bytes(content)
    stored = get_store().put_file(f"models/{model_id}/{kind}.safetensors", source)
    api.add_artifact(model_id, kind, stored)
    return stored


def test_model_lineage_artifacts_and_list(api):
    base = api.base_model()
    model = api.erased_model(base)
    stored_edit(api, model.id)
    data = api.get(f"/models/{model.id}").json()
    lineage = data["lineage"]
    assert lineage["base_model"] == {"id": base.id, "name": base.name, "sha256": base.sha256}
    assert lineage["job_id"] == model.job_id and lineage["parent_model_id"] is None
    assert lineage["concepts"][0]["targets"] == ["cat"] and lineage["seed"] == 0
    artifact = data["artifacts"][0]
    assert artifact["kind"] == "edit" and artifact["bytes"] == len(b"edit-bytes")
    assert artifact["sha256"] == hashlib.sha256(b"edit-bytes").hexdigest()
    assert artifact["url"] == f"/models/{model.id}/artifacts/edit"
    listed = api.get("/models", params={"limit": 200}).json()
    assert model.id in [m["id"] for m in listed["data"]] and listed["count"] >= 1
    assert api.get("/models/nope").status_code == 404


def test_s3_artifact_is_a_presigned_redirect(api):
    model = api.erased_model(api.base_model())
    stored_edit(api, model.id, b"s3 bytes")
    url = f"/models/{model.id}/artifacts/edit"
    redirect = api.get(url, follow_redirects=False)
    assert redirect.status_code == 307
    assert httpx.get(redirect.headers["location"]).content == b"s3 bytes"
    link = api.get(url, params={"redirect": "false"}).json()
    assert httpx.get(link["url"]).content == b"s3 bytes" and link["expires_in"] > 0
    assert api.get(f"/models/{model.id}/artifacts/lora-007").status_code == 404
    assert api.get(f"/models/{model.id}/artifacts/secrets.txt").status_code == 422


def test_local_artifact_is_streamed(api, monkeypatch, tmp_path):
    monkeypatch.setenv("MACE_STORAGE_URL", (tmp_path / "artifacts").as_uri())
    get_settings.cache_clear()
    get_store.cache_clear()
    model = api.erased_model(api.base_model())
    stored_edit(api, model.id, json.dumps({"ok": 1}).encode(), kind="manifest")
    response = api.get(f"/models/{model.id}/artifacts/manifest")
    assert response.status_code == 200 and response.json() == {"ok": 1}
    assert response.headers["etag"].strip('"') == hashlib.sha256(response.content).hexdigest()


def test_missing_export_is_queued_once(api):
    model = api.erased_model(api.base_model())
    broker().delete("erase")
    url = f"/models/{model.id}/artifacts/lora-kohya"
    first = api.get(url)
    assert first.status_code == 202 and int(first.headers["Retry-After"]) > 0
    again = api.get(url)
    assert again.status_code == 202
    messages = [json.loads(m) for m in broker().lrange("erase", 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["mace.export"]  # not twice
    assert messages[0]["headers"]["id"] == f"export-{model.id}-lora-kohya"
    args, _kwargs, _embed = json.loads(base64.b64decode(messages[0]["body"]))
    assert args == [model.id, "lora-kohya"]


def test_failed_export_is_reported_then_retried(api):
    from app.queue import get_celery

    model = api.erased_model(api.base_model())
    url = f"/models/{model.id}/artifacts/unet-pt"
    assert api.get(url).status_code == 202
    task_id = f"export-{model.id}-unet-pt"
    get_celery().backend.mark_as_failure(task_id, ValueError("base model changed"))
    failed = api.get(url)
    assert failed.status_code == 502 and "base model changed" in failed.json()["detail"]
    broker().delete("erase")
    assert api.get(url).status_code == 202  # asked again: queued again
    assert broker().llen("erase") == 1
