"""Where data-ingestion puts LDOs (clip + metadata), and the index that lists them.

Objects (objects.py: a local folder or an S3-compatible bucket), laid out for training jobs that
read by site, device and day:
    <site>/<device_id>/<YYYY-MM-DD>/<ldo_id>.mp4
    <site>/<device_id>/<YYYY-MM-DD>/<ldo_id>.json   (metadata, size_bytes, sha256, created_at, ...)
    _keys/<sha256(idempotency key)>.json          (the reply given for that key)
An LDO's id and object names derive from its idempotency key and its detection time, so a retry,
or two receivers racing on one key, write the same objects, never a second LDO; different keys
never share a name.

The index (index.py) holds one row per LDO and answers `GET /ingest/list`. It is written after
the objects, in the same request: objects first, so there is never a row without its objects. A
crash between the two is repaired: a pending mark written before the objects is resolved at
start-up, a retry with the same key finds its objects and writes the missing row, and `reindex`
(also run at start-up when the index is empty) rebuilds every row from the `.json` records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ..delivery import contract
from ..delivery.contract import rfc3339
from .index import LdoIndex, open_index
from .objects import LocalObjects, S3Objects, StorageUnavailable

__all__ = ["LdoStorage", "StorageUnavailable", "make_storage", "safe_segment", "ldo_identity"]

log = logging.getLogger("edge_agent.receiver")

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PENDING_GIVE_UP_S = 3600  # a pending mark without objects this old is a request that died before writing


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


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_time_us(text: str) -> int:
    """RFC 3339 to integer microseconds (integers, so hour boundaries are exact)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def device_of(record: dict[str, Any]) -> str | None:
    """The device id as the device sent it (any text: `line 1` too), which the index keeps and filters on;
    only the object key uses its safe form. Records written before kept the safe form: the metadata has it."""
    sent = (record.get("metadata") or {}).get("device_id")
    if isinstance(sent, str) and sent:
        return sent
    return str(record["device_id"]) if record.get("device_id") else None


def row_from_record(base: str, record: dict[str, Any]) -> dict[str, Any]:
    """An index row from an LDO's `.json` record: the same row whether written live or rebuilt."""
    key = record.get("idempotency_key")
    parts = base.split("/")
    return {"id": record["id"], "base": base, "key_hash": key_hash(key) if key else None,
            "site": str(record.get("site") or (parts[-4] if len(parts) >= 4 else "default")),
            "device_id": device_of(record) or (parts[-3] if len(parts) >= 3 else "unknown-device"),
            "created_us": parse_time_us(record["created_at"]), "size_bytes": int(record.get("size_bytes") or 0),
            "has_video": 1 if record.get("filename") else 0, "status": str(record.get("status") or "ingested")}


class LdoStorage:
    """Objects + index behind `POST /ingest/ldo` and `GET /ingest/list`."""

    def __init__(self, objects: Any, index: LdoIndex, site: str = "default"):
        self.objects = objects
        self.index = index
        self.site = safe_segment(site, "default")
        self._prepared = False
        self._prepare_lock = threading.Lock()

    def _place(self, key: str | None, meta: dict[str, Any] | None) -> tuple[str, str]:
        ldo_id, epoch = ldo_identity(key, meta)
        device = safe_segment((meta or {}).get("device_id"), "unknown-device")
        day = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d")
        return ldo_id, f"{self.site}/{device}/{day}/{ldo_id}"

    @staticmethod
    def _marker(key: str) -> str:
        return f"_keys/{key_hash(key)}.json"

    def replay(self, key: str | None, meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The reply an earlier request with this key got: from the index, else from the key's
        marker in the store (then the row is missing, and written now from the objects)."""
        self.prepare()
        if not key:
            return None
        body = self.index.reply_for_key(key_hash(key))
        if body is not None:
            return body
        raw = self.objects.get(self._marker(key))
        if raw is None:
            return None
        body = json.loads(raw)
        ldo_id, base = self._place(key, meta)
        if body.get("id") == ldo_id and self._index_from_store(base):
            log.warning("repaired index row ldo=%s (objects were stored, the row was not)", ldo_id)
        return body

    def _index_from_store(self, base: str) -> bool:
        raw = self.objects.get(base + ".json")
        if raw is None:
            return False
        return self.index.add([row_from_record(base, json.loads(raw))], done_base=base) > 0

    def ingest(self, key: str | None, meta: dict[str, Any] | None, video: IO[bytes] | None,
               filename: str | None, expect: tuple[int, str] | None = None) -> dict[str, Any]:
        """Store an LDO; its video and record are durable when this returns, so the reply (echoing the
        video's sha256) may be sent. `expect`, the (size, sha256) the video arrived with: a store that
        took other bytes fails the request. Raises StorageUnavailable when a put or the index commit failed."""
        self.prepare()
        ldo_id, base = self._place(key, meta)
        self.index.pending_add(base)
        size, sha = (self.objects.put_stream(base + ".mp4", video, contract.VIDEO_CONTENT_TYPE)
                     if video is not None else (0, None))
        if video is not None and expect is not None and (size, sha) != expect:
            raise StorageUnavailable(f"{base}.mp4: {size} bytes with sha256 {sha} went to the store, {expect[0]} "
                                     f"bytes with sha256 {expect[1]} were received")
        record = {"id": ldo_id, "status": "ingested", "filename": f"{ldo_id}.mp4" if video is not None else None,
                  "size_bytes": size, "sha256": sha, "created_at": rfc3339(time.time()),
                  "idempotency_key": key, "site": self.site, "metadata": meta}
        record["device_id"] = device_of(record) or base.split("/")[1]
        self.objects.put_bytes(base + ".json", json.dumps(record).encode(), "application/json")
        body = {"id": ldo_id, "status": "ingested", "size_bytes": size, contract.RECEIPT_SHA256: sha}
        if key:
            self.objects.put_if_absent(self._marker(key), json.dumps(body).encode())
        self.index.add([row_from_record(base, record)], done_base=base)
        return body

    def list(self, skip: int, limit: int, **filters: Any) -> tuple[int, list[dict[str, Any]]]:
        self.prepare()
        return self.index.list(skip, limit, **filters)

    # --- start-up and rebuild -------------------------------------------------------------------

    def prepare(self) -> None:
        """At start-up: rebuild an empty index from the store, else finish what a crash left pending.
        Until that has succeeded once (the store may be away at start-up), every request tries it
        again first and gets 503 while it fails, so an empty index is never served as the truth."""
        with self._prepare_lock:
            if self._prepared:
                return
            if self.index.is_empty():
                found, added, secs = self.reindex()
                log.info("index rebuilt from the store: %d LDOs found, %d added, %.1f s", found, added, secs)
            else:
                self.repair()
            self._prepared = True

    def repair(self) -> int:
        repaired = 0
        for base, since in self.index.pending():
            raw = self.objects.get(base + ".json")
            if raw is not None:
                if self.index.add([row_from_record(base, json.loads(raw))], done_base=base):
                    repaired += 1
                    log.warning("repaired index row %s (objects were stored, the row was not)", base)
            elif time.time() - since > PENDING_GIVE_UP_S:
                self.index.pending_drop(base)  # that request died before writing anything
        return repaired

    def _records(self) -> Iterator[str]:
        for key, _size in self.objects.list(""):
            if key.endswith(".json") and not key.startswith("_keys/") and key.count("/") >= 3:
                yield key[:-5]

    def reindex(self, progress: bool | None = None, batch: int = 2000, workers: int = 16) -> tuple[int, int, float]:
        """Add a row for every LDO record in the store that the index lacks; (found, added, seconds).
        Records are read in parallel (each is one GET on S3); progress on a terminal via tqdm."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        log.info("reindex: reading LDO records from %s into %s", self.objects.describe(), self.index.description)
        found = added = 0
        disable = None if progress is None else not progress

        def read(base: str) -> dict[str, Any] | None:
            raw = self.objects.get(base + ".json")
            try:
                return row_from_record(base, json.loads(raw)) if raw is not None else None
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("reindex: skipped %s.json: unreadable record (%s)", base, exc)
                return None

        with ThreadPoolExecutor(workers) as pool, tqdm(desc="reindex", unit=" LDO", disable=disable) as bar:
            pending: list[str] = []

            def flush() -> None:
                nonlocal found, added
                rows = [r for r in pool.map(read, pending) if r is not None]
                found += len(rows)
                added += self.index.add(rows)
                bar.update(len(pending))
                pending.clear()

            for base in self._records():
                pending.append(base)
                if len(pending) >= batch:
                    flush()
            flush()
        return found, added, time.perf_counter() - t0


def make_storage(spec: str | None, data_dir: Path, s3_endpoint: str | None = None, site: str | None = None,
                 index: str | None = None) -> LdoStorage:
    """`file:DIR` (or nothing: `<data dir>/ldos`) or `s3://BUCKET/PREFIX`, with the index of `--index`;
    raises ValueError with a clear message."""
    site = site or os.environ.get("SITE", "default")
    if not spec or spec.startswith("file:"):
        objects: Any = LocalObjects(Path(spec[5:]) if spec and spec[5:] else Path(data_dir) / "ldos")
    elif spec.startswith("s3://"):
        objects = S3Objects(spec, endpoint=s3_endpoint)
    else:
        raise ValueError(f"--storage {spec!r}: expected file:DIR or s3://BUCKET/PREFIX")
    return LdoStorage(objects, open_index(index, Path(data_dir)), site=site)
