"""Service settings from the environment (MACE_*); every default runs on a laptop, no services."""

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
    # Catalog connections kept per process, so a burst of requests does not open and close a
    # server connection each (Postgres forks per connection); with MAX_OVERFLOW, the most a
    # process holds. Mind the server's max_connections: API processes x (POOL + OVERFLOW).
    DB_POOL_SIZE: int = 20
    DB_MAX_OVERFLOW: int = 10
    S3_ENDPOINT_URL: str | None = None
    S3_REGION: str = "us-east-1"
    S3_ACCESS_KEY_ID: str | None = None
    S3_SECRET_ACCESS_KEY: str | None = None
    S3_PRESIGN_SECONDS: int = 3600
    S3_MULTIPART_THRESHOLD_MB: int = 16

    # Longest job the broker waits for before redelivering an unacknowledged message.
    VISIBILITY_TIMEOUT_S: int = 6 * 3600
    # A running job whose worker has not heartbeaten for this long may be taken over.
    JOB_LEASE_S: float = 90.0
    # Stage 2 of a job with more pending concept groups than this is shared out in chunks of
    # about this many groups, which any worker on the `erase` queue may train (one engine pass
    # holds up to 32 groups on a GPU, so smaller chunks waste batch width); 0 never fans out.
    STAGE2_CHUNK_GROUPS: int = Field(default=32, ge=0)
    # Uploads and downloads of artifacts: attempts, and the first wait between them (doubling).
    STORAGE_ATTEMPTS: int = 6
    STORAGE_BACKOFF_S: float = 2.0
    GENERATE_TIMEOUT_S: float = 300.0
    PIPELINE_CACHE_SIZE: int = 2
    EDIT_CACHE_SIZE: int = 8

    MAX_CONCEPT_GROUPS: int = 1000
    MAX_TARGETS_PER_GROUP: int = 16
    MAX_TEMPLATES_PER_GROUP: int = 64  # the engine's own lists are 30 to 40 per kind
    MAX_TEXT_LENGTH: int = 300
    MAX_BODY_BYTES: int = 2 * 1024 * 1024
    MAX_IMAGE_SIDE: int = 1024
    MAX_INFERENCE_STEPS: int = 150
    MAX_IMAGES_PER_REQUEST: int = 8
    MAX_PROMPTS_PER_SET: int = 10000

    MAX_TAGS: int = 32
    # Upper bounds of the engine options, so one request cannot hold a GPU for days.
    MAX_LORA_RANK: int = 64
    MAX_LORA_STEPS: int = 10000
    MAX_IMAGES_PER_CONCEPT: int = 256

    API_KEY_PEPPER: str = Field(
        default="", description="optional server-side secret mixed into key hashes"
    )

    # The broker must answer fast: a submit is accepted (202) even when it is down.
    BROKER_TIMEOUT_S: float = 1.5
    # Re-dispatch of jobs whose message never reached the broker; 0 turns the loop off.
    DISPATCH_INTERVAL_S: float = 2.0
    DISPATCH_GRACE_S: float = 5.0
    EXPORT_RETRY_AFTER_S: int = 10
    # While an export is pending, repeated downloads do not enqueue it again.
    EXPORT_PENDING_TTL_S: int = 900

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
    def edit_cache_folder(self) -> Path:
        return (self.DATA_DIR / "cache" / "edits").resolve()

    @property
    def broker_folder(self) -> Path:
        return (self.DATA_DIR / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
