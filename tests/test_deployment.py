"""docker-compose.yml and the Dockerfile describe the stack the code expects."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_stack():
    services = compose()["services"]
    assert {"api", "worker", "postgres", "redis", "minio", "migrate"} <= set(services)
    assert services["migrate"]["entrypoint"] == ["alembic", "upgrade", "head"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["image"] == services["migrate"]["image"]
    assert services["worker"]["command"][0] == "worker"
    assert services["api"]["command"][0] == "api"


def test_compose_environment_names_real_settings():
    known = {f"MACE_{name}" for name in Settings.model_fields}
    for name in ("api", "worker", "migrate"):
        env = compose()["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("MACE_")} - known
        assert not unknown, f"{name}: {unknown} are not settings"
        assert env["MACE_STORAGE_URL"].startswith("s3://")


def test_dockerfile_runs_the_mace_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["mace"]' in dockerfile
    assert "torch==${TORCH_VERSION}" in dockerfile  # pinned before the project, no CUDA surprise
