"""Helpers of the API tests: an app on the test services, keys made by the CLI's service
function, base models and erased models put straight into the catalog."""

from __future__ import annotations

import uuid

import redis
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.catalog.api_keys import create_api_key
from app.catalog.base_models import register_base_model
from app.catalog.db import session_factory
from app.catalog.models import Artifact, BaseModel, ErasedModel, ErasureJob
from app.settings import get_settings


class Api:
    """A TestClient with a key per role and shortcuts for the catalog."""

    def __init__(self):
        self.client = TestClient(create_app())
        self._keys: dict[str, str] = {}

    def key(self, role: str) -> str:
        if role not in self._keys:
            with session_factory()() as db:
                _, self._keys[role] = create_api_key(
                    db, role=role, name=f"test {role}", pepper=get_settings().API_KEY_PEPPER
                )
        return self._keys[role]

    def auth(self, role: str = "operator", **headers) -> dict:
        return {"Authorization": f"Bearer {self.key(role)}", **headers}

    def get(self, url: str, role: str = "viewer", **kwargs):
        return self.client.get(url, headers=self.auth(role), **kwargs)

    def post(self, url: str, role: str = "operator", headers: dict | None = None, **kwargs):
        return self.client.post(url, headers=self.auth(role, **(headers or {})), **kwargs)

    def base_model(self) -> BaseModel:
        with session_factory()() as db:
            return register_base_model(
                db, name=f"sd-{uuid.uuid4().hex[:8]}", source="/models/sd", sha256="ab" * 32
            )

    def erased_model(self, base: BaseModel, *, status: str = "succeeded", **job_values):
        """A finished job and its model, as a worker would have recorded them."""
        job = ErasureJob(
            base_model_id=base.id,
            status=status,
            request={"concepts": [{"targets": ["cat"], "kind": "object", "anchor": None}]},
            request_sha256="0" * 64,
            dispatched=True,
            **job_values,
        )
        with session_factory()() as db:
            db.add(job)
            db.flush()
            model = ErasedModel(
                base_model_id=base.id,
                job_id=job.id,
                concepts=[{"targets": ["cat"], "kind": "object", "anchor": ""}],
                options={"cfr_lambda": 100.0, "stages": ["cfr", "lora", "fusion"]},
                seed=0,
                tags=["test"],
            )
            db.add(model)
            db.flush()
            job.model_id = model.id
            db.commit()
        return model

    def add_artifact(self, model_id: str, kind: str, stored) -> None:
        with session_factory()() as db:
            db.add(
                Artifact(
                    model_id=model_id,
                    kind=kind,
                    uri=stored.uri,
                    bytes=stored.bytes,
                    sha256=stored.sha256,
                )
            )
            db.commit()

    def job(self, job_id: str) -> ErasureJob:
        with session_factory()() as db:
            return db.get(ErasureJob, job_id)


def broker() -> redis.Redis:
    """The test Redis database the broker URL points at."""
    return redis.Redis.from_url(get_settings().BROKER_URL)


def concept_body(base_name: str, **overrides) -> dict:
    return {"base_model": base_name, "concepts": ["cat, kitten"], **overrides}
