"""The spool's format version: which layout of queue file and sidecars this build reads and writes.

The version lives in the queue file's `PRAGMA user_version` (four bytes of the SQLite header, so a
reader can learn it without opening the database). A queue file from before versioning reads 0 and
is format 1. Opening a spool migrates an older format forward in place, in one transaction. A spool
written by a newer build is refused before anything is opened for writing, by the owner and by
read-only readers alike: after a rollback (installing the older package) the older build must not
run recovery on files whose meaning it does not know, nor drop what it cannot parse. The newer
build reads the spool again after the next upgrade, with nothing lost.

Format history:
  1  queue(event_id, cid, created_at, size_bytes, has_video, sha256, attempts, last_error, seq,
     boot_id, created_mono), drops; the sidecar is the only copy of a clip's metadata.
  2  queue gains `metadata` (the clip's metadata as JSON: the queue row is the source of truth,
     the sidecar a copy) and `clock_synced` (the kernel's NTP state when the clip was queued).
  3  queue gains `state`: `pending` (a read committed at detection, its clip not made yet: no
     sidecar, no files), `ready` (to deliver), `delivered` (the server has it) or `expired` (given
     up: older than spool.max_age_s); the last two while their files are being deleted. Rows of
     older formats are `ready`. `video_drops` counts the videos the spool let go while keeping their
     reads (bounds, a full disk), as `drops` counts reads given up.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("edge_agent.delivery.spool")

FORMAT = 3
QUEUE_FILE = "queue.sqlite3"
# bytes 60-63 of an SQLite file header: the user version, big-endian
_HEADER_MAGIC = b"SQLite format 3\x00"
_USER_VERSION_AT = 60

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    event_id TEXT PRIMARY KEY, cid TEXT NOT NULL, created_at REAL NOT NULL, size_bytes INTEGER NOT NULL,
    has_video INTEGER NOT NULL, sha256 TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    seq INTEGER NOT NULL, boot_id TEXT, created_mono REAL, metadata TEXT, clock_synced INTEGER,
    state TEXT NOT NULL DEFAULT 'ready');
CREATE INDEX IF NOT EXISTS queue_seq ON queue (seq);
CREATE TABLE IF NOT EXISTS drops (
    reason TEXT PRIMARY KEY, count INTEGER NOT NULL, last_at REAL NOT NULL, last_cid TEXT, last_event_id TEXT);
CREATE TABLE IF NOT EXISTS video_drops (
    reason TEXT PRIMARY KEY, count INTEGER NOT NULL, last_at REAL NOT NULL, last_cid TEXT, last_event_id TEXT);
"""
# the queue's counts (reads waiting, bytes of video, the oldest) read from this index, not from every row's
# metadata: a status or a put's bounds on a queue of 100k reads takes milliseconds, not tenths of a second
_INDEXES = ("CREATE INDEX IF NOT EXISTS queue_state ON queue (state, size_bytes, created_at)",)
# columns older queue files lack, added in place (format 1 files may lack the first two as well)
_LATER_COLUMNS = {"boot_id": "TEXT", "created_mono": "REAL", "metadata": "TEXT", "clock_synced": "INTEGER",
                  "state": "TEXT NOT NULL DEFAULT 'ready'"}


class SpoolError(Exception):
    """The spool cannot be used (e.g. its queue file is unreadable and another process owns it)."""


class SpoolTooNew(SpoolError):
    """The spool was written by a newer build: refused, and left exactly as it is."""

    def __init__(self, root: Path, found: int):
        super().__init__(
            f"spool {root} has format {found}, written by a newer edge-agent; this build reads format {FORMAT} "
            f"and older: upgrade edge-agent again to deliver its clips, or move {root} aside to start an empty "
            "spool (nothing in it was changed)")
        self.found = found


def version_of(db: sqlite3.Connection) -> int:
    """The format of an open queue file (0 and 1 alike are format 1)."""
    return max(1, int(db.execute("PRAGMA user_version").fetchone()[0]))


def probe(root: Path) -> int | None:
    """The format of the spool at `root`, read without creating or changing any file; None when there is
    no queue file (yet) or it cannot be read (recovery judges that). SpoolTooNew when it is newer."""
    path = root / QUEUE_FILE
    wal = root / f"{QUEUE_FILE}-wal"
    try:
        if not wal.exists() or wal.stat().st_size == 0:
            # no write-ahead log: the header is current, and reading it opens nothing SQLite would add to
            with path.open("rb") as f:
                header = f.read(100)
            if len(header) < 100 or not header.startswith(_HEADER_MAGIC):
                return None
            found = max(1, int.from_bytes(header[_USER_VERSION_AT:_USER_VERSION_AT + 4], "big"))
        else:  # a log not yet checkpointed (the owner runs, or crashed): SQLite reads through it
            db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
            try:
                found = version_of(db)
            finally:
                db.close()
    except (OSError, sqlite3.Error):
        return None
    if found > FORMAT:
        raise SpoolTooNew(root, found)
    return found


def prepare(db: sqlite3.Connection, root: Path | None) -> None:
    """Refuse a newer format; create or migrate an older one to FORMAT, in place and in one transaction.
    `root`: the spool's folder, whose sidecars fill in the metadata column of format 1 rows (None for
    an in-memory queue)."""
    found = version_of(db)
    if found > FORMAT:
        raise SpoolTooNew(root or Path("(memory)"), found)
    existed = db.execute("SELECT 1 FROM sqlite_master WHERE name='queue'").fetchone() is not None
    if found == FORMAT and existed:
        for stmt in _INDEXES:
            db.execute(stmt)
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # statement by statement: executescript would commit the transaction first
        for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
            db.execute(stmt)
        have = {r[1] for r in db.execute("PRAGMA table_info(queue)")}
        for col, kind in _LATER_COLUMNS.items():
            if col not in have:
                db.execute(f"ALTER TABLE queue ADD COLUMN {col} {kind}")
        for stmt in _INDEXES:
            db.execute(stmt)
        filled = _fill_metadata(db, root / "clips") if root is not None else 0
        db.execute(f"PRAGMA user_version = {FORMAT}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if existed and found < FORMAT and root is not None:
        log.info("spool format migrated from %d to %d dir=%s rows_with_metadata=%d", found, FORMAT, root, filled)


def _fill_metadata(db: sqlite3.Connection, clips: Path) -> int:
    """Copy each queued clip's metadata from its sidecar into its row; a sidecar that cannot be read
    leaves the row as it is (it still goes out with its CID and video)."""
    n = 0
    rows = db.execute("SELECT event_id FROM queue WHERE metadata IS NULL").fetchall()
    for (event_id,) in rows:
        try:
            data = json.loads((clips / f"{event_id}.json").read_text(encoding="utf-8"))
            meta = data["metadata"]
            if not isinstance(meta, dict):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        db.execute("UPDATE queue SET metadata=? WHERE event_id=?", (json.dumps(meta), event_id))
        n += 1
    return n
