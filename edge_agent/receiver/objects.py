"""Where LDO objects live: a local folder or an S3-compatible bucket, behind one small interface
(put a stream, put bytes, put only if absent, get, list), so the ingest, index and reindex logic
in storage.py is written once. Keys are relative to the folder or to the bucket prefix."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..delivery.spool_files import fsync_path

log = logging.getLogger("edge_agent.receiver")


class StorageUnavailable(Exception):
    """The store cannot be reached or refused us; the client should retry later (503)."""


def _copy_hashing(src: IO[bytes], out: IO[bytes] | None) -> tuple[int, str]:
    """Read `src` to its end (into `out` when given); its size and sha256."""
    h = hashlib.sha256()
    size = 0
    while block := src.read(1 << 20):
        h.update(block)
        size += len(block)
        if out is not None:
            out.write(block)
    return size, h.hexdigest()


class LocalObjects:
    """Objects as files under one folder, each written to a temporary name, fsynced, then renamed, and
    the folder fsynced (with every folder made for it), so a reader (or a reindex after a crash) never
    sees half an object, and an object that was acknowledged is still there after a power cut."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"file:{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def _folder(self, folder: Path) -> None:
        """Make `folder` and its missing parents, each durable (its parent fsynced once it exists)."""
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            made.mkdir(exist_ok=True)
            fsync_path(made.parent)

    def _write(self, key: str, fill: Any) -> Any:
        path = self._path(key)
        self._folder(path.parent)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.part"
        try:
            with tmp.open("wb") as out:
                result = fill(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            fsync_path(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return result

    def put_stream(self, key: str, src: IO[bytes], content_type: str) -> tuple[int, str]:
        try:
            return self._write(key, lambda out: _copy_hashing(src, out))
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self._write(key, lambda out: out.write(data))
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            self._folder(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            fsync_path(path.parent)
        except OSError as exc:
            path.unlink(missing_ok=True)  # a torn marker would answer every retry of its key with garbage
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc
        return True

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with `prefix`, temporary files excluded."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    yield key, os.stat(os.path.join(dirpath, name)).st_size


class S3Objects:
    """AWS S3, MinIO, SeaweedFS or any S3-compatible store, through boto3 (credentials the usual
    boto3 way: environment, shared credentials file, instance role)."""

    def __init__(self, url: str, endpoint: str | None = None):
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError as exc:
            raise ValueError("--storage s3:// needs boto3: pip install 'cid-edge-agent[s3]'") from exc
        m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?", url)
        if not m:
            raise ValueError(f"--storage {url!r}: expected s3://BUCKET/PREFIX")
        self.bucket = m[1]
        self.prefix = (m[2] or "").strip("/")
        self.endpoint = endpoint
        # a pool as large as the reindex's parallel reads, so those do not queue for connections
        self.s3 = boto3.client("s3", endpoint_url=endpoint, config=BotoConfig(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30,
            max_pool_connections=32))
        self._check_bucket()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _errors(self) -> tuple[type[BaseException], ...]:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError, S3UploadFailedError)

    def _check_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except EndpointConnectionError as exc:
            log.error("object store unreachable at start-up (will answer 503 until it is back): %s", exc)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ValueError(f"bucket {self.bucket!r} does not exist: create it first") from exc
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ValueError(f"the object store refused our credentials for bucket {self.bucket!r} "
                                 f"({code}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile") from exc
            raise ValueError(f"bucket {self.bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise ValueError(f"object store: {exc}") from exc

    def put_stream(self, key: str, src: IO[bytes], content_type: str) -> tuple[int, str]:
        """Size and sha256 first, then the upload: a file is read twice, any other stream copied to a
        temporary file. Returns only once the store has answered the put (boto3 raises otherwise; its
        default request checksum has the store verify the bytes it got)."""
        try:
            if src.seekable():
                start = src.tell()
                size, sha = _copy_hashing(src, None)
                src.seek(start)
                self.s3.upload_fileobj(src, self.bucket, self._key(key), ExtraArgs={"ContentType": content_type})
                return size, sha
            with tempfile.TemporaryFile() as tmp:
                size, sha = _copy_hashing(src, tmp)
                tmp.seek(0)
                self.s3.upload_fileobj(tmp, self.bucket, self._key(key), ExtraArgs={"ContentType": content_type})
            return size, sha
        except (*self._errors(), OSError) as exc:
            raise StorageUnavailable(f"object store: {exc}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        except self._errors() as exc:
            raise StorageUnavailable(f"object store: {exc}") from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType="application/json",
                               IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise StorageUnavailable(f"object store: {exc}") from exc
        except self._errors() as exc:
            raise StorageUnavailable(f"object store: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StorageUnavailable(f"object store: {exc}") from exc
        except self._errors() as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        cut = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                for o in page.get("Contents", []):
                    yield o["Key"][cut:], int(o["Size"])
        except self._errors() as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc
