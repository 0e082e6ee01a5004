"""API keys: who may do what, keys made and revoked by the CLI, base models registered by it."""

from __future__ import annotations

import json

from app.catalog.api_keys import revoke_api_key
from app.catalog.db import session_factory
from app.cli import main
from app.settings import get_settings
from tests.service.api_support import concept_body
from worker.erasure.base_model import model_identity


def test_health_needs_no_key(api):
    assert api.client.get("/health").json() == {"status": "ok"}


def test_missing_malformed_and_wrong_keys_are_401(api):
    valid = api.key("viewer")
    prefix = valid.split("_")[1]
    for headers in [
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer mace_{prefix}_not-the-secret"},
        {"Authorization": f"Basic {valid}"},
    ]:
        response = api.client.get("/erasures", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["detail"]
    assert api.client.get("/erasures", headers=api.auth("viewer")).status_code == 200


def test_revoked_key_is_401(api):
    key = api.key("operator")
    assert api.get("/erasures", role="operator").status_code == 200
    with session_factory()() as db:
        from app.catalog.api_keys import authenticate

        record = authenticate(db, key=key)
        revoke_api_key(db, key_id=record.id)
    assert api.get("/erasures", role="operator").status_code == 401


def test_roles(api):
    base = api.base_model()
    body = concept_body(base.name)
    viewer = api.post("/erasures", role="viewer", json=body)
    assert viewer.status_code == 403 and "operator" in viewer.json()["detail"]
    assert api.get("/erasures", role="viewer").status_code == 200
    assert api.get("/metrics", role="viewer").status_code == 200
    job_id = api.post("/erasures", role="operator", json=body).json()["id"]
    assert api.post(f"/erasures/{job_id}/cancel", role="viewer").status_code == 403
    assert api.post(f"/erasures/{job_id}/cancel", role="admin").status_code == 200
    assert api.post("/erasures", role="admin", json=body).status_code == 202
    assert api.post("/generate", role="viewer", json={"prompt": "x"}).status_code == 403


def test_pepper_changes_the_stored_hash(api, monkeypatch):
    monkeypatch.setenv("MACE_API_KEY_PEPPER", "server-secret")
    get_settings.cache_clear()
    peppered = api.key("admin")
    assert api.get("/erasures", role="admin").status_code == 200
    monkeypatch.setenv("MACE_API_KEY_PEPPER", "another")
    get_settings.cache_clear()
    wrong = api.client.get("/erasures", headers={"Authorization": f"Bearer {peppered}"})
    assert wrong.status_code == 401


def test_cli_keys_create_list_revoke(api, capsys):
    assert main(["keys", "create", "--role", "operator", "--name", "ci runner"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    key = out[-1]
    assert key.startswith("mace_") and "operator" in out[0]
    headers = {"Authorization": f"Bearer {key}"}
    assert api.client.get("/erasures", headers=headers).status_code == 200

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    line = next(row for row in listing.splitlines() if "ci runner" in row)
    key_id = line.split()[0]
    assert key.split("_")[2] not in listing  # secrets are never shown again

    assert main(["keys", "revoke", key_id]) == 0
    assert api.client.get("/erasures", headers=headers).status_code == 401
    assert main(["keys", "revoke", "0" * 32]) == 2
    assert "no API key" in capsys.readouterr().err


def test_cli_base_models_add_hashes_the_model(api, tmp_path, capsys):
    model = tmp_path / "pipeline"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    name = f"local-{tmp_path.name[-8:]}"
    assert main(["base-models", "add", name, str(model)]) == 0
    assert model_identity(str(model)).sha256 in capsys.readouterr().out
    assert main(["base-models", "list"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith(name))
    assert str(model.resolve()) in row
    # The registered name is what requests use.
    assert api.post("/erasures", json=concept_body(name)).status_code == 202

    assert main(["base-models", "add", name, str(model)]) == 2
    assert "already registered" in capsys.readouterr().err
    assert main(["base-models", "add", "other", str(tmp_path / "missing")]) == 2
    assert "no diffusers pipeline" in capsys.readouterr().err
    assert main(["base-models", "add", "other", "someone/not-cached-model"]) == 2
    assert "not in the local Hugging Face cache" in capsys.readouterr().err
