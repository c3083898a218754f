"""The durable on-disk queue of clips waiting for delivery (DESIGN.md section 7).

A clip is written as `tmp/<id>.mp4.part`, fsynced, renamed into `clips/`, its metadata written
beside it as `clips/<id>.json` the same way, the directory fsynced, and only then recorded in
SQLite (WAL, synchronous=FULL). After a power cut every clip is in one of these states: a
`.part` (never handed over: dropped), a file with its sidecar but no row (re-enqueued from the
sidecar), or a row. Nothing is deleted before the server answered 2xx.

On open the spool recovers and never refuses to start: parts are removed, orphans re-enqueued,
clips whose bytes no longer match their sha256 (torn writes, bit rot) and unreadable queue files
are moved to `quarantine/`, where `edge-agent spool requeue` can bring them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SpoolConfig
from .metrics import Metrics

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    event_id TEXT PRIMARY KEY, cid TEXT NOT NULL, created_at REAL NOT NULL, size_bytes INTEGER NOT NULL,
    has_video INTEGER NOT NULL, sha256 TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    seq INTEGER NOT NULL);
"""


@dataclass
class Entry:
    event_id: str
    cid: str
    metadata: dict[str, Any]
    video_path: Path | None
    size_bytes: int
    sha256: str | None
    created_at: float
    attempts: int
    last_error: str | None


@dataclass
class SpoolStatus:
    clips: int
    bytes: int
    oldest_at: float | None
    last_error: str | None
    quarantined: int


def _fsync(path: Path) -> None:
    """fsync a file's data, or a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _created_at(side: Path) -> float:
    try:
        return float(json.loads(side.read_text(encoding="utf-8"))["created_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _safe_id(event_id: str) -> bool:
    """Event ids are our own UUIDs; anything else never becomes a path."""
    return 0 < len(event_id) <= 64 and all(c.isalnum() or c == "-" for c in event_id)


class Spool:
    """Thread-safe: the clip worker puts, the uploader takes, the CLI inspects."""

    def __init__(self, cfg: SpoolConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.root = Path(cfg.dir)
        self.tmp = self.root / "tmp"
        self.clips = self.root / "clips"
        self.quarantine_dir = self.root / "quarantine"
        for d in (self.root, self.tmp, self.clips, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = self._open_db()
        self._recover()
        self._update_gauges()

    # --- opening and recovery -------------------------------------------------------------------

    def _open_db(self) -> sqlite3.Connection:
        path = self.root / "queue.sqlite3"
        try:
            db = self._connect(path)
            db.execute("SELECT COUNT(*) FROM queue").fetchone()
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            return db
        except sqlite3.DatabaseError as exc:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(path) + suffix)
                if p.exists():
                    os.replace(p, self.quarantine_dir / f"queue.sqlite3{suffix}.corrupt-{stamp}")
            log.error("spool queue file unreadable (%s): moved to quarantine, rebuilding from clip sidecars", exc)
            self.metrics.inc("edge_agent_spool_recovered_total", reason="queue_rebuilt")
            return self._connect(path)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    def _recover(self) -> None:
        with self._lock:
            for part in list(self.tmp.glob("*")) + list(self.clips.glob("*.part")):
                part.unlink(missing_ok=True)
                log.info("spool recovery: removed unfinished file %s", part.name)
            rows = {r[0]: r for r in self._db.execute("SELECT event_id, has_video, sha256, size_bytes FROM queue")}
            # rows go before files on delivery, so a row without its files means the files were lost
            for event_id, has_video, sha, _size in rows.values():
                side = self.clips / f"{event_id}.json"
                mp4 = self.clips / f"{event_id}.mp4"
                if not side.exists() or (has_video and not mp4.exists()):
                    self._quarantine_files(event_id, "files missing after restart")
                    self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))
                    continue
                if has_video and sha and _sha256(mp4) != sha:
                    self._quarantine_files(event_id, "clip bytes do not match their sha256 (torn write?)")
                    self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))
            known = {r[0] for r in self._db.execute("SELECT event_id FROM queue")}
            orphans = [side for side in self.clips.glob("*.json") if side.stem not in known]
            for side in sorted(orphans, key=_created_at):  # keep delivery in the order clips were made
                self._reenqueue(side)
            for mp4 in self.clips.glob("*.mp4"):
                if not (self.clips / f"{mp4.stem}.json").exists():
                    self._quarantine_files(mp4.stem, "clip without metadata sidecar")
            self._expire()

    def _reenqueue(self, side: Path) -> None:
        event_id = side.stem
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
            cid = data["cid"]
            if not isinstance(data["metadata"], dict):
                raise ValueError("metadata is not an object")
            created = float(data["created_at"])
            has_video = bool(data["has_video"])
            sha = data.get("sha256")
            mp4 = self.clips / f"{event_id}.mp4"
            if has_video and (not mp4.exists() or (sha and _sha256(mp4) != sha)):
                raise ValueError("clip missing or its bytes do not match sha256")
            size = mp4.stat().st_size if has_video else 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._quarantine_files(event_id, f"cannot re-enqueue: {exc}")
            return
        self._insert(event_id, cid, created, size, has_video, sha, meta_attempts=int(data.get("attempts", 0)))
        self.metrics.inc("edge_agent_spool_recovered_total", reason="orphan_reenqueued")
        log.info("spool recovery: re-enqueued cid=%s clip=%s", cid, event_id)

    def _insert(self, event_id: str, cid: str, created: float, size: int, has_video: bool, sha: str | None,
                meta_attempts: int = 0) -> None:
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queue").fetchone()[0]
        self._db.execute(
            "INSERT OR REPLACE INTO queue (event_id, cid, created_at, size_bytes, has_video, sha256, attempts, seq)"
            " VALUES (?,?,?,?,?,?,?,?)", (event_id, cid, created, size, int(has_video), sha, meta_attempts, seq))

    # --- putting --------------------------------------------------------------------------------

    def part_path(self, event_id: str) -> Path:
        if not _safe_id(event_id):
            raise ValueError("event id must be alphanumeric with dashes")
        return self.tmp / f"{event_id}.mp4.part"

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> bool:
        """Make the clip durable and enqueue it; False when the spool is full and on_full is reject_new."""
        if not _safe_id(event_id):
            raise ValueError("event id must be alphanumeric with dashes")
        size = video_part.stat().st_size if video_part is not None else 0
        sha = (metadata.get("clip") or {}).get("sha256") if video_part is not None else None
        with self._lock:
            if not self._make_room(size, cid, event_id):
                if video_part is not None:
                    video_part.unlink(missing_ok=True)
                return False
            mp4 = self.clips / f"{event_id}.mp4"
            if video_part is not None:
                _fsync(video_part)
                os.replace(video_part, mp4)
            created = time.time()
            side_tmp = self.tmp / f"{event_id}.json.part"
            side_tmp.write_text(json.dumps({"cid": cid, "metadata": metadata, "created_at": created,
                                            "has_video": video_part is not None, "sha256": sha}), encoding="utf-8")
            _fsync(side_tmp)
            os.replace(side_tmp, self.clips / f"{event_id}.json")
            _fsync(self.clips)
            self._insert(event_id, cid, created, size, video_part is not None, sha)
            self._update_gauges()
        log.info("queued cid=%s clip=%s bytes=%d", cid, event_id, size)
        return True

    def _totals(self) -> tuple[int, int]:
        n, b = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM queue").fetchone()
        return int(n), int(b)

    def _make_room(self, size: int, cid: str, event_id: str) -> bool:
        self._expire()
        while True:
            _, used = self._totals()
            free = shutil.disk_usage(self.root).free
            over_bytes = used + size > self.cfg.max_bytes
            low_disk = free - size < self.cfg.min_free_bytes
            if not over_bytes and not low_disk:
                return True
            reason = "max_bytes" if over_bytes else "min_free_bytes"
            oldest = self._db.execute("SELECT event_id, cid FROM queue ORDER BY seq LIMIT 1").fetchone()
            if self.cfg.on_full == "reject_new" or oldest is None:
                self.metrics.inc("edge_agent_spool_dropped_total", reason=f"{reason}_rejected_new")
                log.error("spool full (%s): dropped new cid=%s clip=%s", reason, cid, event_id)
                return False
            self._remove(oldest[0])
            self.metrics.inc("edge_agent_spool_dropped_total", reason=f"{reason}_dropped_oldest")
            log.error("spool full (%s): dropped oldest cid=%s clip=%s", reason, oldest[1], oldest[0])

    def _expire(self) -> None:
        cutoff = time.time() - self.cfg.max_age_s
        for event_id, cid in self._db.execute("SELECT event_id, cid FROM queue WHERE created_at < ?",
                                              (cutoff,)).fetchall():
            self._remove(event_id)
            self.metrics.inc("edge_agent_spool_dropped_total", reason="max_age")
            log.error("spool: dropped clip older than spool.max_age_s cid=%s clip=%s", cid, event_id)

    # --- taking ---------------------------------------------------------------------------------

    def head(self) -> Entry | None:
        """The oldest waiting clip (delivery is in order)."""
        with self._lock:
            row = self._db.execute(
                "SELECT event_id, cid, created_at, size_bytes, has_video, sha256, attempts, last_error FROM queue"
                " ORDER BY seq LIMIT 1").fetchone()
            return self._entry(row) if row else None

    def entries(self) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, cid, created_at, size_bytes, has_video, sha256, attempts, last_error FROM queue"
                " ORDER BY seq").fetchall()
            return [e for e in (self._entry(r) for r in rows) if e is not None]

    def _entry(self, row: tuple[Any, ...]) -> Entry | None:
        event_id, cid, created, size, has_video, sha, attempts, last_error = row
        try:
            meta = json.loads((self.clips / f"{event_id}.json").read_text(encoding="utf-8"))["metadata"]
        except (OSError, ValueError, KeyError):
            meta = {}
        return Entry(event_id, cid, meta, self.clips / f"{event_id}.mp4" if has_video else None, size, sha,
                     created, attempts, last_error)

    def mark_delivered(self, event_id: str) -> None:
        with self._lock:
            self._remove(event_id)
            self._update_gauges()

    def mark_failed(self, event_id: str, error: str) -> None:
        with self._lock:
            self._db.execute("UPDATE queue SET attempts = attempts + 1, last_error = ? WHERE event_id=?",
                             (error[:500], event_id))

    def quarantine(self, event_id: str, reason: str) -> None:
        with self._lock:
            row = self._db.execute("SELECT cid FROM queue WHERE event_id=?", (event_id,)).fetchone()
            self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))
            self._quarantine_files(event_id, reason)
            self._update_gauges()
        log.error("quarantined cid=%s clip=%s reason=%s", row[0] if row else "?", event_id, reason)

    def _remove(self, event_id: str) -> None:
        """Row first: a crash after it leaves an orphan sidecar, which recovery re-sends (a duplicate
        the server dedupes), never a row pointing at nothing."""
        self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))
        (self.clips / f"{event_id}.mp4").unlink(missing_ok=True)
        (self.clips / f"{event_id}.json").unlink(missing_ok=True)

    def _quarantine_files(self, event_id: str, reason: str) -> None:
        moved = False
        for suffix in (".mp4", ".json"):
            src = self.clips / f"{event_id}{suffix}"
            if src.exists():
                os.replace(src, self.quarantine_dir / src.name)
                moved = True
        if moved:
            (self.quarantine_dir / f"{event_id}.reason").write_text(reason + "\n", encoding="utf-8")
            self.metrics.inc("edge_agent_spool_quarantined_total")
            log.error("spool: quarantined clip=%s reason=%s", event_id, reason)

    def requeue(self) -> int:
        """Move quarantined clips that still have their metadata back into the queue."""
        n = 0
        with self._lock:
            for side in sorted(self.quarantine_dir.glob("*.json")):
                event_id = side.stem
                if not _safe_id(event_id):
                    continue
                mp4 = self.quarantine_dir / f"{event_id}.mp4"
                if mp4.exists():
                    os.replace(mp4, self.clips / mp4.name)
                os.replace(side, self.clips / side.name)
                (self.quarantine_dir / f"{event_id}.reason").unlink(missing_ok=True)
                before = self._totals()[0]
                self._reenqueue(self.clips / side.name)
                n += self._totals()[0] - before
            _fsync(self.clips)
            self._update_gauges()
        return n

    # --- introspection --------------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        with self._lock:
            n, b = self._totals()
            oldest = self._db.execute("SELECT MIN(created_at) FROM queue").fetchone()[0]
            err = self._db.execute("SELECT last_error FROM queue WHERE last_error IS NOT NULL ORDER BY seq LIMIT 1"
                                   ).fetchone()
        quarantined = len(list(self.quarantine_dir.glob("*.reason")))
        return SpoolStatus(n, b, oldest, err[0] if err else None, quarantined)

    def _update_gauges(self) -> None:
        n, b = self._totals()
        self.metrics.set("edge_agent_spool_clips", n)
        self.metrics.set("edge_agent_spool_bytes", b)

    def update_config(self, cfg: SpoolConfig) -> None:
        """Live reload of the bounds; the folder itself is restart-only."""
        self.cfg = cfg.model_copy(update={"dir": self.cfg.dir})

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
