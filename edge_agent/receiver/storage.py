"""Where data-ingestion puts LDOs (clip + metadata): a local folder, or S3-compatible object storage.

Both back `POST /ingest/ldo` and `GET /ingest/list` through one small interface, so the HTTP layer
does not know which is in use.

S3 layout, for training jobs that read by site, device and day:
    PREFIX/<site>/<device_id>/<YYYY-MM-DD>/<ldo_id>.mp4
    PREFIX/<site>/<device_id>/<YYYY-MM-DD>/<ldo_id>.json   (metadata, size_bytes, sha256, ...)
    PREFIX/_keys/<sha256(idempotency key)>.json           (the reply given for that key)
Idempotency lives in the store, not in a receiver's memory, so it survives restarts and holds
across several receivers: an LDO's id and object names are derived from its idempotency key and
its detection time, so a retry, or two receivers racing on one key, write the same objects with
the same bytes, never a second LDO; different keys never share a name, so two sites writing at
the same moment never overwrite each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol

from ..delivery.contract import rfc3339

log = logging.getLogger("edge_agent.receiver")

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StorageUnavailable(Exception):
    """The store cannot be reached or refused us; the client should retry later (503)."""


class LdoStorage(Protocol):
    def replay(self, key: str | None) -> dict[str, Any] | None: ...

    def ingest(self, key: str | None, meta: dict[str, Any] | None, video: IO[bytes] | None,
               filename: str | None) -> dict[str, Any]: ...

    def list(self, skip: int, limit: int) -> tuple[int, list[dict[str, Any]]]: ...


def safe_segment(value: object, fallback: str) -> str:
    """Client-sent names (device id, site) become key segments only if plainly safe."""
    text = str(value) if value is not None else ""
    return text if _SAFE_SEGMENT.fullmatch(text) and ".." not in text else fallback


def _detected_epoch(meta: dict[str, Any] | None) -> float:
    try:
        return datetime.fromisoformat(str((meta or {})["detected_at"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return time.time()


def ldo_identity(key: str | None, meta: dict[str, Any] | None) -> tuple[str, float]:
    """`ldo_<hex>_<epoch-seconds>`: deterministic for a key (hex of its hash, epoch of the detection)."""
    epoch = _detected_epoch(meta)
    hexpart = hashlib.sha256(key.encode()).hexdigest()[:16] if key else uuid.uuid4().hex[:16]
    return f"ldo_{hexpart}_{int(epoch)}", epoch


class FileLdoStorage:
    """The local folder + SQLite store (the default); see store.py."""

    def __init__(self, store: Any):
        self.store = store

    def replay(self, key: str | None) -> dict[str, Any] | None:
        prior = self.store.reply_for("ldo", key)
        return prior[1] if prior else None

    def ingest(self, key: str | None, meta: dict[str, Any] | None, video: IO[bytes] | None,
               filename: str | None) -> dict[str, Any]:
        video_file = sha = None
        size = 0
        if video is not None:
            video_file, size, sha = self.store.save_video("ldos", video)
        ldo_id, _ = ldo_identity(key, meta)
        if not key:
            ldo_id = f"ldo_{uuid.uuid4().hex[:16]}_{int(time.time())}"
        self.store.add_ldo({
            "id": ldo_id, "idempotency_key": key, "status": "ingested",
            "filename": Path(video_file).name if video_file else None, "video_file": video_file,
            "metadata": json.dumps(meta) if meta is not None else None, "size_bytes": size, "sha256": sha,
            "created_at": time.time(),
        })
        body = {"id": ldo_id, "status": "ingested", "size_bytes": size}
        self.store.remember("ldo", key, 201, body)
        return body

    def list(self, skip: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        return self.store.list_ldos(skip, limit)


class S3LdoStorage:
    """AWS S3, MinIO, SeaweedFS or any S3-compatible store, through boto3 (credentials the usual
    boto3 way: environment, shared credentials file, instance role)."""

    def __init__(self, url: str, endpoint: str | None = None, site: str = "default"):
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError as exc:
            raise ValueError("--storage s3:// needs boto3: pip install 'edge-agent[s3]'") from exc
        m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?", url)
        if not m:
            raise ValueError(f"--storage {url!r}: expected s3://BUCKET/PREFIX")
        self.bucket = m[1]
        self.prefix = (m[2] or "").strip("/")
        self.site = safe_segment(site, "default")
        self.s3 = boto3.client("s3", endpoint_url=endpoint, config=BotoConfig(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30))
        self._check_bucket()

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

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

    def _marker(self, key: str) -> str:
        return self._key("_keys", hashlib.sha256(key.encode()).hexdigest() + ".json")

    def replay(self, key: str | None) -> dict[str, Any] | None:
        if not key:
            return None
        from botocore.exceptions import ClientError

        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self._marker(key))
            return json.loads(obj["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StorageUnavailable(f"object store: {exc}") from exc
        except self._errors() as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc

    def ingest(self, key: str | None, meta: dict[str, Any] | None, video: IO[bytes] | None,
               filename: str | None) -> dict[str, Any]:
        ldo_id, epoch = ldo_identity(key, meta)
        device = safe_segment((meta or {}).get("device_id"), "unknown-device")
        day = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d")
        base = self._key(self.site, device, day, ldo_id)
        size = 0
        sha = None
        try:
            if video is not None:
                # hash and size first (the upload may be streamed from a spooled temporary file)
                h = hashlib.sha256()
                with tempfile.TemporaryFile() as tmp:
                    while block := video.read(1 << 20):
                        h.update(block)
                        size += len(block)
                        tmp.write(block)
                    tmp.seek(0)
                    sha = h.hexdigest()
                    self.s3.upload_fileobj(tmp, self.bucket, base + ".mp4",
                                           ExtraArgs={"ContentType": "video/mp4"})
            record = {"id": ldo_id, "status": "ingested", "filename": f"{ldo_id}.mp4" if video is not None else None,
                      "size_bytes": size, "sha256": sha, "created_at": rfc3339(time.time()),
                      "idempotency_key": key, "site": self.site, "device_id": device, "metadata": meta}
            self.s3.put_object(Bucket=self.bucket, Key=base + ".json", Body=json.dumps(record).encode(),
                               ContentType="application/json")
            body = {"id": ldo_id, "status": "ingested", "size_bytes": size}
            if key:
                self._commit(key, body)
        except self._errors() as exc:
            raise StorageUnavailable(f"object store: {exc}") from exc
        return body

    def _commit(self, key: str, body: dict[str, Any]) -> None:
        """Record the reply for the key; a racing receiver that got there first wrote the same."""
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._marker(key), Body=json.dumps(body).encode(),
                               ContentType="application/json", IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412",
                                                                  "ConditionalRequestConflict"):
                raise

    def list(self, skip: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """From the store itself: every `<ldo_id>.json` under the prefix (not `_keys/`), sizes and times
        from the listing, in key order (site, device, day, id), no per-object reads."""
        keys_prefix = self._key("_keys") + "/"
        objs: dict[str, dict[str, Any]] = {}
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=(self.prefix + "/") if self.prefix else "")
            for page in pages:
                for o in page.get("Contents", []):
                    k = o["Key"]
                    if k.startswith(keys_prefix) or not k.endswith((".json", ".mp4")):
                        continue
                    base, ext = k.rsplit(".", 1)
                    e = objs.setdefault(base, {"json": None, "mp4": None})
                    e[ext] = o
        except self._errors() as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc
        rows = []
        for base in sorted(objs):
            e = objs[base]
            if e["json"] is None:
                continue  # a video whose record is not written yet
            ldo_id = base.rsplit("/", 1)[-1]
            rows.append({"id": ldo_id, "status": "ingested",
                         "filename": f"{ldo_id}.mp4" if e["mp4"] is not None else None,
                         "created_at": rfc3339(e["json"]["LastModified"].timestamp()),
                         "size_bytes": int(e["mp4"]["Size"]) if e["mp4"] is not None else 0})
        return len(rows), rows[skip : skip + limit]
