"""Artifact storage: S3 (boto3, multipart, retries) or a local folder, behind one interface.

Keys are deterministic (`models/<id>/edit.safetensors`), so a retried upload overwrites the same
object; every download is checked against the sha256 recorded in the catalog.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from app.settings import Settings, get_settings


class StorageError(RuntimeError):
    """The store could not be reached or an object failed its checksum."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    bytes: int
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LocalStore:
    """A folder; writes go through a temporary file and a rename, so readers never see halves."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"invalid object key {key!r}")
        return path

    def put_file(self, key: str, source: Path) -> StoredObject:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as partial:
            with open(source, "rb") as handle:
                shutil.copyfileobj(handle, partial)
            partial.flush()
            os.fsync(partial.fileno())
        os.replace(partial.name, target)
        return StoredObject(key, target.as_uri(), target.stat().st_size, sha256_of(target))

    def get_file(self, key: str, destination: Path, sha256: str | None = None) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise StorageError(f"no stored object {key!r}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        _verify(destination, sha256, key)
        return destination

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove an object; one that is already gone is not an error."""
        self._path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str) -> str | None:
        return None  # a local file is served by the API itself

    def open(self, key: str):
        return open(self._path(key), "rb")

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"artifact folder {self.root} is not writable")


class S3Store:
    """An S3-compatible bucket (AWS, MinIO, moto) through boto3."""

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.presign_seconds = settings.S3_PRESIGN_SECONDS
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.S3_ENDPOINT_URL,
            region_name=settings.S3_REGION,
            aws_access_key_id=settings.S3_ACCESS_KEY_ID,
            aws_secret_access_key=settings.S3_SECRET_ACCESS_KEY,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60
            ),
        )
        threshold = settings.S3_MULTIPART_THRESHOLD_MB * 1024 * 1024
        self.transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, source: Path) -> StoredObject:
        from botocore.exceptions import BotoCoreError, ClientError

        digest = sha256_of(source)
        try:
            self.client.upload_file(
                str(source),
                self.bucket,
                self._key(key),
                Config=self.transfer,
                ExtraArgs={"Metadata": {"sha256": digest}},
            )
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"upload of {key} failed: {exc}") from exc
        if (
            head["ContentLength"] != source.stat().st_size
            or head.get("Metadata", {}).get("sha256") != digest
        ):
            raise StorageError(f"upload of {key} did not verify")
        return StoredObject(
            key, f"s3://{self.bucket}/{self._key(key)}", head["ContentLength"], digest
        )

    def get_file(self, key: str, destination: Path, sha256: str | None = None) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(
                self.bucket, self._key(key), str(destination), Config=self.transfer
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"download of {key} failed: {exc}") from exc
        _verify(destination, sha256, key)
        return destination

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def delete(self, key: str) -> None:
        """Remove an object; one that is already gone is not an error (S3 semantics)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"delete of {key} failed: {exc}") from exc

    def presigned_url(self, key: str) -> str | None:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=self.presign_seconds,
        )

    def open(self, key: str):
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def ping(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"bucket {self.bucket} unreachable: {exc}") from exc

    def ensure_bucket(self) -> None:
        if not self.exists_bucket():
            self.client.create_bucket(Bucket=self.bucket)

    def exists_bucket(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except ClientError:
            return False


def _verify(path: Path, sha256: str | None, key: str) -> None:
    if sha256 and sha256_of(path) != sha256:
        path.unlink(missing_ok=True)
        raise StorageError(f"{key}: checksum mismatch after download")


def make_store(settings: Settings | None = None) -> LocalStore | S3Store:
    settings = settings or get_settings()
    url = urlparse(settings.storage_url)
    if url.scheme == "file":
        return LocalStore(Path(url.path))
    if url.scheme == "s3":
        return S3Store(url.netloc, url.path, settings)
    raise ValueError(
        f"MACE_STORAGE_URL must be s3://bucket[/prefix] or file:///path, got {settings.storage_url}"
    )
