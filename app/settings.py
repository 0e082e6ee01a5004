"""Service settings from the environment (MACE_*); every default runs on a laptop with no services."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """With only MACE_DATA_DIR: SQLite, a local artifact folder and a filesystem broker.
    With MACE_DATABASE_URL, MACE_BROKER_URL and MACE_STORAGE_URL: the production stack."""

    model_config = SettingsConfigDict(env_prefix="MACE_", extra="ignore")

    DATA_DIR: Path = Path("data")
    DATABASE_URL: str | None = None  # default: sqlite:///<DATA_DIR>/catalog.db
    BROKER_URL: str | None = None  # default: kombu's filesystem transport under DATA_DIR
    RESULT_BACKEND_URL: str | None = None  # default: Redis db 1 with a Redis broker, else files
    STORAGE_URL: str | None = None  # s3://bucket/prefix or file:///path; default DATA_DIR/artifacts
    S3_ENDPOINT_URL: str | None = None
    S3_REGION: str = "us-east-1"
    S3_ACCESS_KEY_ID: str | None = None
    S3_SECRET_ACCESS_KEY: str | None = None
    S3_PRESIGN_SECONDS: int = 3600
    S3_MULTIPART_THRESHOLD_MB: int = 16

    # Longest job the broker waits for before redelivering an unacknowledged message.
    VISIBILITY_TIMEOUT_S: int = 6 * 3600
    GENERATE_TIMEOUT_S: float = 300.0
    PIPELINE_CACHE_SIZE: int = 2

    MAX_CONCEPT_GROUPS: int = 1000
    MAX_TARGETS_PER_GROUP: int = 16
    MAX_TEXT_LENGTH: int = 300
    MAX_BODY_BYTES: int = 2 * 1024 * 1024
    MAX_IMAGE_SIDE: int = 1024
    MAX_INFERENCE_STEPS: int = 150
    MAX_IMAGES_PER_REQUEST: int = 8
    MAX_PROMPTS_PER_SET: int = 10000

    API_KEY_PEPPER: str = Field(default="", description="optional server-side secret mixed into key hashes")

    @property
    def database_url(self) -> str:
        return self.DATABASE_URL or f"sqlite:///{(self.DATA_DIR / 'catalog.db').resolve()}"

    @property
    def storage_url(self) -> str:
        return self.STORAGE_URL or (self.DATA_DIR / "artifacts").resolve().as_uri()

    @property
    def embedded_broker(self) -> bool:
        return self.BROKER_URL is None

    @property
    def broker_folder(self) -> Path:
        return (self.DATA_DIR / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
