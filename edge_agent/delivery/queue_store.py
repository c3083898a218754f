"""The spool's queue: one SQLite row per read, every access under one lock (docs/architecture.md section 7).

A row is made when a read is made (`pending`: the detect thread commits it before it moves on), gets
its clip when the clip stage has made it (`ready`: what the uploader sends, oldest first), is marked
`delivered` once the server has it and deleted when its files are gone. The row is the source of
truth for a read's CID and metadata; the clip's sidecar file is a copy of it (clip_files).

SQLite runs in WAL mode with synchronous=FULL: a commit appends to the write-ahead log and fsyncs it
before it returns, so a read committed is a read that survives a power cut. (NORMAL, the usual WAL
pairing, fsyncs only at checkpoints: the last commits before a power cut may roll back, which is
right for a cache and wrong for a count of products.) Each change of a read's state is one
transaction, one fsync of the log; SQLite also fsyncs the folder when it creates the log.

The clip and uploader threads and the commands share one connection, each statement under the store's
lock: no method hands out the connection, so nothing reads or writes the queue around it. A read's commit
at detection (`add_read`) has a connection and a lock of its own, so it never waits for what holds the
shared one (a status scan, a put's bounds, a requeue's hashing); SQLite's own write lock orders the
commits of both, each one statement.
SQLite's automatic checkpoint is off: it would run inside whichever commit grew the log past its limit,
the detect thread's too, copying the log into the database and fsyncing both. `checkpoint` runs it on a
connection of its own, from the clip and uploader threads, without the store's lock: in WAL mode a
checkpoint does not stop a commit, so a read's commit waits for one fsync of the log and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.delivery.contract import SCHEMA_VERSION

PENDING = "pending"  # the read is committed; its clip is not made yet (no files)
READY = "ready"  # the clip (or the CID alone) waits for delivery
DELIVERED = "delivered"  # the server has it; its files are being deleted
EXPIRED = "expired"  # given up (older than spool.max_age_s); its files are being deleted

# Drop tables: reads given up, and videos let go while their reads stay queued.
READS = "drops"
VIDEOS = "video_drops"

# The log is copied into the queue file after this many commits: ~1000 pages of 4 kB (a read's commit writes
# ~3), SQLite's own default, a few seconds of checkpoint work on an SD card, done off the detect thread.
CHECKPOINT_EVERY_COMMITS = 250

_INSERT = ("INSERT OR REPLACE INTO queue (event_id, cid, created_at, size_bytes, has_video, sha256, attempts, seq,"
           " boot_id, created_mono, metadata, clock_synced, state) VALUES (?,?,?,?,?,?,0,"
           "(SELECT COALESCE(MAX(seq), 0) + 1 FROM queue),?,?,?,?,?)")


def _insert_args(event_id: str, record: dict[str, Any], state: str) -> tuple[Any, ...]:
    synced = record.get("clock_synced")
    return (event_id, record["cid"], float(record["created_at"]), int(record.get("size_bytes") or 0),
            int(bool(record.get("has_video", True))), record.get("sha256"), record.get("boot_id"),
            record.get("created_mono"), json.dumps(record["metadata"]), None if synced is None else int(bool(synced)),
            state)


_ROW = ("event_id, cid, state, has_video, sha256, size_bytes, created_at, attempts, last_error, metadata, boot_id,"
        " created_mono, clock_synced")


@dataclass(frozen=True)
class Row:
    """One read in the queue."""

    event_id: str
    cid: str
    state: str
    has_video: bool
    sha256: str | None
    size_bytes: int
    created_at: float  # wall clock when the row was made, for people
    attempts: int
    last_error: str | None
    metadata: dict[str, Any]
    boot_id: str | None
    created_mono: float | None
    clock_synced: bool | None

    def record(self) -> dict[str, Any]:
        """The row as its sidecar holds it ("cid" first: spool_files.salvage_sidecar reads it from a torn one)."""
        return {"cid": self.cid, "metadata": self.metadata, "created_at": self.created_at,
                "has_video": self.has_video, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "boot_id": self.boot_id, "created_mono": self.created_mono, "clock_synced": self.clock_synced}


def _row(values: tuple[Any, ...]) -> Row:
    event_id, cid, state, has_video, sha, size, created, attempts, err, meta, boot, mono, synced = values
    metadata = json.loads(meta) if meta else None
    if not isinstance(metadata, dict):
        # a row of format 1 whose sidecar could not be read when it was migrated: the least that names the read
        clip = {"sha256": sha, "size_bytes": size} if sha else {}
        metadata = {"schema_version": SCHEMA_VERSION, "event_id": event_id, "cid": cid, "clip": clip}
    return Row(event_id, cid, state or READY, bool(has_video), sha, int(size or 0), float(created), int(attempts or 0),
               err, metadata, boot, mono, None if synced is None else bool(synced))


class QueueStore:
    """The queue's rows. Thread-safe; `memory` tells a queue kept in memory because its file could not be
    opened (a full disk, an I/O error), which lasts until the next start."""

    def __init__(self, db: sqlite3.Connection | None, *, memory: bool = False, path: Path | None = None):
        """`path`: the queue file, for checkpoints and the reads' own connection (None: a queue in memory or
        read-only: one connection for all)."""
        self._db = db
        self.memory = memory
        self._lock = threading.RLock()
        self._path = path
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        self._commits = 0  # since the last checkpoint
        self._reads: sqlite3.Connection | None = None  # the detect thread's, for `add_read`
        self._reads_lock = threading.Lock()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Several statements as one step against the other threads (re-entrant)."""
        with self._lock:
            yield

    @property
    def open(self) -> bool:
        with self._lock:
            return self._db is not None

    def close(self) -> None:
        with self._reads_lock:
            if self._reads is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._reads.close()
                self._reads = None
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()  # the last connection checkpoints the log into the file and removes it
                self._db = None

    def checkpoint(self, every: int = CHECKPOINT_EVERY_COMMITS) -> None:
        """Copy the write-ahead log into the queue file once `every` commits were made since the last time,
        on a connection of its own (PASSIVE: commits go on meanwhile). Called from threads that may wait:
        the clip stage after a put, the uploader between deliveries. (The log file's size says nothing:
        SQLite writes it again from its start after a checkpoint, at the size it had.)"""
        with self._lock:
            if self._path is None or self._commits < every:
                return
            self._commits = 0
        with self._checkpoint_lock:
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(str(self._path), check_same_thread=False,
                                                         isolation_level=None, timeout=30)
                    self._checkpointer.execute("PRAGMA synchronous=FULL")
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                pass  # the next one tries again; the log stays whole meanwhile

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self._db is None:
            raise sqlite3.ProgrammingError("the spool's queue is closed")
        cur = self._db.execute(sql, args)
        if not sql.startswith(("SELECT", "PRAGMA")):
            self._commits += 1  # each statement its own transaction (autocommit)
        return cur

    # --- writes: each one transaction ------------------------------------------------------------

    def add(self, event_id: str, record: dict[str, Any], state: str = READY) -> None:
        """A row at the queue's end (a clip found on disk without its row, a read not committed before)."""
        with self._lock:
            self._run(_INSERT, _insert_args(event_id, record, state))

    def add_read(self, event_id: str, record: dict[str, Any]) -> None:
        """A read just made, `pending` at the queue's end: the detect thread's commit, on its own connection."""
        if self._path is None:  # a queue in memory: one database, one connection
            return self.add(event_id, record, PENDING)
        with self._reads_lock:
            if self._reads is None:
                self._reads = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None,
                                              timeout=30)
                self._reads.execute("PRAGMA synchronous=FULL")
                self._reads.execute("PRAGMA wal_autocheckpoint=0")
            self._reads.execute(_INSERT, _insert_args(event_id, record, PENDING))
        with self._lock:
            self._commits += 1

    def attach(self, event_id: str, record: dict[str, Any]) -> None:
        """The read's clip (or its CID alone) is ready: the pending row takes it where it stands in the
        queue (reads go out in the order they were made); a read with no row joins at the end."""
        with self._lock:
            cur = self._run(
                "UPDATE queue SET cid=?, size_bytes=?, has_video=?, sha256=?, metadata=?, state=? "
                "WHERE event_id=? AND state=?",
                (record["cid"], int(record.get("size_bytes") or 0), int(bool(record.get("has_video"))),
                 record.get("sha256"), json.dumps(record["metadata"]), READY, event_id, PENDING))
            if not cur.rowcount:
                self.add(event_id, record, READY)

    def without_video(self, event_id: str, metadata: dict[str, Any], state: str = READY) -> bool:
        """The read goes out CID-only with `metadata`; False if it is no longer queued."""
        with self._lock:
            return bool(self._run("UPDATE queue SET has_video=0, size_bytes=0, sha256=NULL, metadata=?, state=? "
                                  "WHERE event_id=?", (json.dumps(metadata), state, event_id)).rowcount)

    def set_state(self, event_id: str, state: str) -> bool:
        with self._lock:
            return bool(self._run("UPDATE queue SET state=? WHERE event_id=?", (state, event_id)).rowcount)

    def delete(self, event_id: str) -> None:
        with self._lock:
            self._run("DELETE FROM queue WHERE event_id=?", (event_id,))

    def failed(self, event_id: str, error: str) -> bool:
        """Count a failed attempt; False if the read is no longer queued."""
        with self._lock:
            return bool(self._run("UPDATE queue SET attempts = attempts + 1, last_error = ? WHERE event_id=?",
                                  (error, event_id)).rowcount)

    def count_drop(self, table: str, reason: str, cid: str, event_id: str, at: float) -> None:
        """One more read (READS) or video (VIDEOS) given up for `reason`, kept across restarts."""
        assert table in (READS, VIDEOS)
        with self._lock:
            self._run(f"INSERT INTO {table} (reason, count, last_at, last_cid, last_event_id) VALUES (?,1,?,?,?) "
                      "ON CONFLICT(reason) DO UPDATE SET count=count+1, last_at=excluded.last_at, "
                      "last_cid=excluded.last_cid, last_event_id=excluded.last_event_id", (reason, at, cid, event_id))

    # --- reads ---------------------------------------------------------------------------------

    def _first(self, where: str, args: tuple[Any, ...]) -> Row | None:
        """The first row matching `where` (its ORDER BY included), or None; None on a closed queue."""
        with self._lock:
            if self._db is None:
                return None
            found = self._run(f"SELECT {_ROW} FROM queue WHERE {where}", args).fetchone()
        return None if found is None else _row(found)

    def get(self, event_id: str) -> Row | None:
        return self._first("event_id=?", (event_id,))

    def rows(self, state: str | None = None) -> list[Row]:
        """Every row (or those in `state`), in queue order."""
        with self._lock:
            if self._db is None:
                return []
            if state is None:
                found = self._run(f"SELECT {_ROW} FROM queue ORDER BY seq").fetchall()
            else:
                found = self._run(f"SELECT {_ROW} FROM queue WHERE state=? ORDER BY seq", (state,)).fetchall()
        return [_row(r) for r in found]

    def first_ready(self) -> Row | None:
        """The oldest read ready to go (pending reads wait for their clip, without holding the others back)."""
        return self._first("state=? ORDER BY seq LIMIT 1", (READY,))

    def stamps(self, state: str) -> list[tuple[str, str, float, str | None, float | None, bool | None]]:
        """(event id, CID, created_at, boot id, monotonic time, clock synced) of each row in `state`: what an
        age is read from, without the metadata."""
        with self._lock:
            if self._db is None:
                return []
            found = self._run("SELECT event_id, cid, created_at, boot_id, created_mono, clock_synced FROM queue "
                              "WHERE state=?", (state,)).fetchall()
        return [(e, c, float(t), b, m, None if s is None else bool(s)) for e, c, t, b, m, s in found]

    def oldest(self) -> Row | None:
        """The read waiting longest (first in the queue), pending or ready."""
        return self._first("state IN (?, ?) ORDER BY seq LIMIT 1", (PENDING, READY))

    def ids(self) -> set[str]:
        """Every row's event id (recovery: which files have a row)."""
        with self._lock:
            if self._db is None:
                return set()
            return {r[0] for r in self._run("SELECT event_id FROM queue")}

    def oldest_with_video(self) -> Row | None:
        return self._first("state=? AND has_video=1 ORDER BY seq LIMIT 1", (READY,))

    def totals(self) -> tuple[int, int, int]:
        """(reads waiting, of them pending, bytes of video)."""
        with self._lock:
            if self._db is None:
                return 0, 0, 0
            n, pending, b = self._run(
                "SELECT COUNT(*), COALESCE(SUM(state=?), 0), COALESCE(SUM(size_bytes), 0) FROM queue "
                "WHERE state IN (?, ?)", (PENDING, PENDING, READY)).fetchone()
        return int(n), int(pending), int(b)

    def oldest_created_at(self) -> float | None:
        with self._lock:
            if self._db is None:
                return None
            return self._run("SELECT MIN(created_at) FROM queue WHERE state IN (?, ?)", (PENDING, READY)
                             ).fetchone()[0]

    def first_error(self) -> str | None:
        """The oldest read's last delivery error, if any."""
        with self._lock:
            if self._db is None:
                return None
            found = self._run("SELECT last_error FROM queue WHERE last_error IS NOT NULL ORDER BY seq LIMIT 1"
                              ).fetchone()
        return found[0] if found else None

    def drops(self, table: str) -> dict[str, int]:
        """Reads (READS) or videos (VIDEOS) given up since the spool began, by reason."""
        assert table in (READS, VIDEOS)
        with self._lock:
            if self._db is None:
                return {}
            try:
                return dict(self._run(f"SELECT reason, count FROM {table} ORDER BY reason").fetchall())
            except sqlite3.Error:  # a queue file of an older format opened read-only: no such table
                return {}

    def setting(self, pragma: str) -> Any:
        """A PRAGMA's value (journal_mode, synchronous, user_version): what the tests and `check` verify."""
        assert pragma.isidentifier()
        with self._lock:
            return self._run(f"PRAGMA {pragma}").fetchone()[0]
