"""Where `receiver export` reads clips from: the LDOs of data-ingestion (index + objects, the default) or
the clips `POST /cid` kept itself (`--source cid`: a receiver run with data ingestion off keeps them in its
data dir, listed by `GET /cid/list`, and data-ingestion never sees them).

Both give the same thing for each clip, oldest first: a server-made id (file names derive from it, never
from anything a device sent), whether it has a video, and on demand its metadata and video. The /cid
store is read-only here (SQLite opened read-only, beside a running receiver that holds the data dir).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .index import keyset_walk
from .storage import LdoStorage
from .store import DB_FILE

PAGE = 1000


@dataclass(frozen=True)
class Entry:
    id: str
    has_video: bool
    ref: str  # where its objects are: the LDO's base key, or the /cid event's video file


class Source(Protocol):
    description: str

    def walk(self, device_id: str | None, since_us: int | None) -> Iterator[Entry]: ...

    def metadata(self, entry: Entry) -> dict[str, Any] | None: ...

    def video(self, entry: Entry) -> bytes | None: ...

    def close(self) -> None: ...


class LdoSource:
    """data-ingestion's LDOs: the index lists them (device and ingest time filtered there), the store holds them."""

    def __init__(self, storage: LdoStorage):
        self.storage = storage
        self.description = f"the LDOs of {storage.objects.describe()} (index {storage.index.description})"

    def walk(self, device_id: str | None, since_us: int | None) -> Iterator[Entry]:
        for ldo_id, base, has_video in self.storage.index.walk(device_id=device_id, since_us=since_us):
            yield Entry(ldo_id, has_video, base)

    def metadata(self, entry: Entry) -> dict[str, Any] | None:
        raw = self.storage.objects.get(entry.ref + ".json")
        if raw is None:
            return None
        meta = json.loads(raw).get("metadata")
        return meta if isinstance(meta, dict) else {}

    def video(self, entry: Entry) -> bytes | None:
        data: bytes | None = self.storage.objects.get(entry.ref + ".mp4")
        return data

    def close(self) -> None:
        self.storage.index.close()


class CidSource:
    """The clips `POST /cid` stored in a receiver's data dir (receiver.sqlite3 and videos/)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.description = f"the /cid clips of {self.data_dir / DB_FILE}"
        self._db = sqlite3.connect(f"file:{self.data_dir / DB_FILE}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()  # the walk and the workers share the connection

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def count(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM events")[0][0])

    def walk(self, device_id: str | None, since_us: int | None) -> Iterator[Entry]:
        conds, args = [], []
        if device_id is not None:
            conds.append("json_extract(metadata, '$.device_id') = ?")
            args.append(device_id)
        if since_us is not None:
            conds.append("received_at >= ?")
            args.append(since_us / 1e6)
        for event_id, video_file, _ in keyset_walk(self._q, "SELECT id, video_file, received_at FROM events",
                                                   "received_at", conds, args, PAGE, float):
            yield Entry(str(event_id), bool(video_file), str(video_file or ""))

    def metadata(self, entry: Entry) -> dict[str, Any] | None:
        rows = self._q("SELECT metadata FROM events WHERE id = ?", (entry.id,))
        if not rows:
            return None
        meta = json.loads(rows[0][0]) if rows[0][0] else {}
        return meta if isinstance(meta, dict) else {}

    def video(self, entry: Entry) -> bytes | None:
        path = self.data_dir / entry.ref  # videos/<server-made id>.mp4
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        self._db.close()


def cid_clips(data_dir: Path) -> int:
    """How many clips `POST /cid` kept in this data dir (0: none, or no receiver database there)."""
    if not (Path(data_dir) / DB_FILE).is_file():
        return 0
    try:
        source = CidSource(data_dir)
        try:
            return source.count()
        finally:
            source.close()
    except sqlite3.Error:
        return 0
