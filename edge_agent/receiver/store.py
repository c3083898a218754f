"""Where the receiver keeps what `POST /cid` accepted: videos as files, everything else in SQLite
(LDOs of data-ingestion are in storage.py).

Paths are always made from server-generated ids, never from anything a client sent. Every
idempotency key is recorded with the reply it got, so a retry gets the same answer and no
second record, across restarts.

Durable before acknowledged: a video arrives in `incoming/<id>.part` (body.py); once the request is
checked it is fsynced, renamed into `videos/` and the directory fsynced; then the event row and the
key's reply are committed in one SQLite transaction (WAL, synchronous=FULL: the commit is on disk when
it returns). Only then does the client get its 2xx. A request that fails after the rename removes its
video (`forget_video`); a crash before the commit leaves at most a part file (removed at the next
start) or a video no row names (never listed; the sender's retry stores its own copy), never a row
whose video is not on disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..delivery.spool_files import fsync_path
from .lock import hold

DB_FILE = "receiver.sqlite3"  # in the data dir: what POST /cid accepted (`receiver export --source cid` reads it)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    scope TEXT NOT NULL, key TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 1, created_at REAL NOT NULL, PRIMARY KEY (scope, key));
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, cid TEXT NOT NULL, event_id TEXT, idempotency_key TEXT UNIQUE,
    metadata TEXT, video_file TEXT, size_bytes INTEGER, sha256 TEXT, sha256_ok INTEGER,
    ldo_id TEXT, received_at REAL NOT NULL);
"""


class Store:
    """Thread-safe (one connection, one lock): uvicorn runs sync endpoints in a thread pool."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._lock_fd = hold(self.data_dir)  # DataDirInUse before anything is opened or written
        (self.data_dir / "videos").mkdir(parents=True, exist_ok=True)
        self.incoming = self.data_dir / "incoming"
        self.incoming.mkdir(exist_ok=True)
        for stale in [*self.incoming.glob("*.part"), *(self.data_dir / "videos").glob("*.part")]:
            stale.unlink(missing_ok=True)  # bodies a crash or a kill cut short: never acknowledged
        self._db = sqlite3.connect(str(self.data_dir / DB_FILE), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        # (scope, key) -> [lock, requests holding or waiting for it]; an entry lives only while a
        # request with that key is in flight, so the table is bounded by concurrent requests
        self._key_locks: dict[tuple[str, str], list[Any]] = {}

    @contextmanager
    def key_lock(self, scope: str, key: str | None) -> Iterator[None]:
        """Serialise requests carrying the same idempotency key: the second waits, then replays."""
        if not key:
            yield
            return
        with self._lock:
            entry = self._key_locks.setdefault((scope, key), [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._key_locks[(scope, key)]

    def locked_keys(self) -> int:
        """Idempotency keys with a request in flight (the size of the lock table)."""
        with self._lock:
            return len(self._key_locks)

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- idempotency ----------------------------------------------------------------------------

    def reply_for(self, scope: str, key: str | None) -> tuple[int, dict[str, Any]] | None:
        """The stored reply for a key seen before, else None."""
        if not key:
            return None
        rows = self._q("SELECT status, body FROM replies WHERE scope=? AND key=?", (scope, key))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def count_replay(self, scope: str, key: str) -> None:
        """One more request answered with the stored reply (GET /cid/list shows the count)."""
        self._q("UPDATE replies SET requests = requests + 1 WHERE scope=? AND key=?", (scope, key))

    # --- files ----------------------------------------------------------------------------------

    def keep_video(self, folder: str, part: Path) -> str:
        """Make a received part file a stored video: fsync it, rename it to `<folder>/<random id>.mp4`,
        fsync the folder (a rename is durable only once its directory is). Returns the relative path."""
        name = f"{folder}/{uuid.uuid4().hex}.mp4"
        fsync_path(part)
        os.replace(part, self.data_dir / name)
        fsync_path(self.data_dir / folder)
        return name

    def forget_video(self, name: str) -> None:
        """Remove a kept video that no event names (its request failed before the commit)."""
        (self.data_dir / name).unlink(missing_ok=True)

    # --- records --------------------------------------------------------------------------------

    def add_event(self, row: dict[str, Any], status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """Record the event and the reply to its key in one transaction; None when done. When the key
        was recorded first (by a request this process did not serialise with), nothing is written and
        the stored reply is returned: the caller removes its copy of the video and answers with it."""
        key = row["idempotency_key"]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # writers queue here, across processes too
            try:
                prior = self._db.execute("SELECT status, body FROM replies WHERE scope='cid' AND key=?",
                                         (key,)).fetchall() if key else []
                if not prior:
                    self._db.execute(
                        "INSERT INTO events (id, cid, event_id, idempotency_key, metadata, video_file, size_bytes,"
                        " sha256, sha256_ok, ldo_id, received_at) VALUES (:id, :cid, :event_id, :idempotency_key,"
                        " :metadata, :video_file, :size_bytes, :sha256, :sha256_ok, :ldo_id, :received_at)", row)
                    if key:
                        self._db.execute("INSERT INTO replies (scope, key, status, body, created_at) VALUES "
                                         "('cid', ?, ?, ?, ?)", (key, status, json.dumps(body), time.time()))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("ROLLBACK" if prior else "COMMIT")
        return (prior[0][0], json.loads(prior[0][1])) if prior else None

    def list_events(self, skip: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        total = self._q("SELECT COUNT(*) FROM events")[0][0]
        rows = self._q(
            "SELECT e.id, e.cid, e.event_id, e.idempotency_key, e.metadata, e.video_file, e.size_bytes, e.sha256,"
            " e.sha256_ok, e.ldo_id, e.received_at, COALESCE(r.requests, 1) FROM events e LEFT JOIN replies r"
            " ON r.scope='cid' AND r.key=e.idempotency_key ORDER BY e.received_at, e.id LIMIT ? OFFSET ?",
            (limit, skip))
        keys = ("id", "cid", "event_id", "idempotency_key", "metadata", "video_file", "size_bytes", "sha256",
                "sha256_ok", "ldo_id", "received_at", "requests")
        out = []
        for r in rows:
            d = dict(zip(keys, r, strict=True))
            d["metadata"] = json.loads(d["metadata"]) if d["metadata"] else None
            d["sha256_ok"] = None if d["sha256_ok"] is None else bool(d["sha256_ok"])
            d["received_at"] = _iso(d["received_at"])
            out.append(d)
        return total, out

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._lock_fd)


def _iso(ts: float) -> str:
    from edge_agent.delivery.contract import rfc3339

    return rfc3339(ts)
