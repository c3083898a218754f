"""The durable on-disk queue of clips waiting for delivery (docs/architecture.md section 7).

A clip is written as `tmp/<id>.mp4.part` and fsynced, its metadata written and fsynced as
`tmp/<id>.json.part`; the metadata is renamed into `clips/<id>.json` (the commit point), the clip
into `clips/<id>.mp4`, the directory fsynced, and only then the clip is recorded in SQLite (WAL,
synchronous=FULL). From then on the row is the source of truth for the clip's CID and metadata and
the sidecar a copy (rewritten from the row if lost or torn). After a power cut every clip is in one
of these states: parts only (never handed over: dropped), a sidecar whose clip is still a whole part
in tmp/ (the rename is finished), files with no row (re-enqueued from the sidecar, which holds
everything the row will), or a row. Nothing is deleted before the server
answered 2xx, and the row goes before the files, so a crash in between leaves an orphan that is
sent again (a duplicate the server dedupes by its idempotency key), never a row pointing nowhere.

On open the spool recovers and never refuses to start: parts are removed, orphans re-enqueued,
clips whose bytes no longer match their sha256 (torn writes on storage that lies about fsync,
bit rot) or cannot be read, and an unreadable queue file, are moved to `quarantine/`, from
where `edge-agent spool requeue` brings clips back.

One process owns a spool (an flock on `spool.lock`): only the owner runs recovery, because
recovery deletes `.part` files that the owner's clip worker may be writing. `edge-agent spool
status` run beside the service just reads.

Retry timing lives in memory on the monotonic clock: after a restart every clip is due at
once, which is what a restarted device should do. Ages for `spool.max_age_s` use the monotonic
clock too while the clip was made in this boot, so an NTP jump on a Pi without a real-time
clock does not make fresh clips look a week old and drop them; across a reboot a clip's age is
known only if the wall clock was synchronised when it was queued and is now (`age_s`).

This module is the queue itself (put, take, quarantine; the lock is spool_lock's); what runs at open lives in
spool_recovery, the durable file and sidecar helpers in spool_files, and what commands read of
quarantine/ without the lock in spool_quarantine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edge_agent import clock_sync
from edge_agent.config import SpoolConfig
from edge_agent.delivery import spool_lock
from edge_agent.delivery.contract import SCHEMA_VERSION
from edge_agent.delivery.spool_files import (
    boot_id,
    fsync_path,
    is_disk_full,
    read_sidecar,
    safe_id,
    salvage_sidecar,
    sidecar_created_at,
    write_sidecar,
)
from edge_agent.delivery.spool_format import SpoolError, SpoolTooNew, probe
from edge_agent.delivery.spool_quarantine import (
    REQUEUE_ANSWER,
    REQUEUE_REQUEST,
    newest_quarantine_reason,
    quarantined_count,
)
from edge_agent.delivery.spool_recovery import open_queue, open_readonly, recover, reenqueue
from edge_agent.metrics import Metrics
from edge_agent.redact import redact

log = logging.getLogger(__name__)

_COLUMNS = "event_id, cid, created_at, size_bytes, has_video, sha256, attempts, last_error, metadata"
# a queue row as its sidecar copy holds it (the sidecar's keys, "cid" first: see spool_files.salvage_sidecar)
_ROW = "cid, metadata, created_at, has_video, sha256, size_bytes, boot_id, created_mono, clock_synced"
# expiring needs a scan of the queue: at most this often from next_due()
_EXPIRE_EVERY_S = 60.0
# a put that hits ENOSPC drops at most this many oldest clips to make room before giving up
_ENOSPC_DROPS = 16
# Less free space than this on the spool's disk reads as full: SQLite and a clip's sidecar need a little.
_FULL_BELOW_BYTES = 1 << 20


__all__ = ["Entry", "Spool", "SpoolBusy", "SpoolError", "SpoolStatus", "SpoolTooNew"]


class SpoolBusy(SpoolError):
    """Another process (the running agent) owns the spool."""

    def __init__(self, root: Path, pid: int | None):
        super().__init__(f"{root} is in use by edge-agent (pid {pid or '?'})")
        self.pid = pid


@dataclass
class Entry:
    event_id: str
    cid: str
    metadata: dict[str, Any]
    video_path: Path | None
    size_bytes: int
    sha256: str | None
    created_at: float  # wall clock, for people
    attempts: int
    last_error: str | None
    retry_at: float = 0.0  # monotonic time of the next attempt; 0: due now


@dataclass
class SpoolStatus:
    clips: int
    bytes: int
    oldest_at: float | None
    last_error: str | None
    quarantined: int
    dropped: dict[str, int] = field(default_factory=dict)  # clips given up, by reason, since the spool began
    free_bytes: int = 0
    disk_full: bool = False
    quarantine_reason: str | None = None  # why the newest quarantined clip was set aside


class QueueRow(NamedTuple):
    """What the queue holds of a clip that recovery checks against its files."""

    event_id: str
    cid: str
    has_video: bool
    sha256: str | None
    size_bytes: int


def _unusable(root: Path, why: str) -> SpoolError:
    return SpoolError(f"cannot use spool.dir {root}: {why} (point spool.dir at a writable folder on a local "
                      "disk; the service's is /var/lib/edge-agent/spool)")


def _file_in_the_way(root: Path) -> Path | None:
    """The regular file that `root` is or lies under, if any (its nearest existing ancestor, not a folder)."""
    path = root
    while not path.exists() and path != path.parent:  # exists() is False under a file (ENOTDIR) too
        path = path.parent
    return path if path.exists() and not path.is_dir() else None


class Spool:
    """The queue of clips. Thread-safe: the clip worker puts, the uploader takes, the CLI inspects."""

    def __init__(self, cfg: SpoolConfig, metrics: Metrics | None = None, *, reader: bool = False,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        """The owner (the agent, replay, `spool flush` with no agent running) takes the spool's lock
        and recovers it; SpoolBusy when another process holds it. A reader (`spool status`/`list`)
        takes no lock, opens the queue read-only and never changes a file. `monotonic` and `wall` are
        the clocks a clip's age is read on (spool.max_age_s): a test passes its own."""
        self.cfg = cfg
        self._monotonic = monotonic
        self._wall = wall
        self.metrics = metrics or Metrics()
        self.root = Path(cfg.dir)
        self.tmp = self.root / "tmp"
        self.clips = self.root / "clips"
        self.quarantine_dir = self.root / "quarantine"
        self.reader = reader
        self.disk_full = False  # the last write met a full disk
        self._lock = threading.RLock()
        self._retry_at: dict[str, float] = {}
        self._next_expire = 0.0
        self._next_request_check = 0.0
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        if reader:
            # a spool not made yet reads as empty; one that is, or lies under, a regular file is a typo in
            # spool.dir, said as the owner would say it (not an empty spool on a disk of absurd size)
            blocker = _file_in_the_way(self.root)
            if blocker is not None:
                raise _unusable(self.root, os.strerror(errno.ENOTDIR) + f": {blocker} is a file")
            self.owner, self.owner_pid = False, spool_lock.owner_pid(self.root)
            self._db = open_readonly(self.root, self.clips)
            return
        probe(self.root)  # a newer build's spool is refused before any file is created, locked or moved
        try:
            for d in (self.root, self.tmp, self.clips, self.quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
            fd, self.owner_pid = spool_lock.take(self.root)
            self.owner = fd is not None
            self._lock_fd = fd if fd is not None and fd >= 0 else None
        except OSError as exc:
            raise _unusable(self.root, exc.strerror or str(exc)) from exc
        if not self.owner:
            raise SpoolBusy(self.root, self.owner_pid)
        try:
            self._db, self.disk_full = open_queue(self.root, self.clips, self.quarantine_dir, self.metrics)
        except SpoolError:
            self.close()
            raise
        recover(self)
        self._update_gauges()

    @classmethod
    def open_reader(cls, cfg: SpoolConfig) -> Spool:
        return cls(cfg, reader=True)

    # --- the queue store, as recovery and requeue drive it (under `exclusive()`) ---------------

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the queue against the clip worker and the uploader (re-entrant: the methods below take
        it again)."""
        with self._lock:
            yield

    def rows(self) -> list[QueueRow]:
        """Every queued clip's row as recovery checks it against the disk, in queue order."""
        with self._lock:
            if self._db is None:
                return []
            return [QueueRow(e, c, bool(v), sha, int(size or 0)) for e, c, v, sha, size in self._db.execute(
                "SELECT event_id, cid, has_video, sha256, size_bytes FROM queue ORDER BY seq")]

    def forget(self, event_id: str) -> None:
        """Delete a clip's row, leaving its files (recovery sets them aside or counts them lost)."""
        with self._lock:
            if self._db is not None:
                self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))
            self._retry_at.pop(event_id, None)

    def insert(self, event_id: str, data: dict[str, Any]) -> None:
        """A queue row from a clip's record (`_record`, or a sidecar holding one), at the queue's end."""
        assert self._db is not None
        synced = data.get("clock_synced")
        with self._lock:  # the next seq and the row in one step
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queue").fetchone()[0]
            self._db.execute(
                "INSERT OR REPLACE INTO queue (event_id, cid, created_at, size_bytes, has_video, sha256, attempts,"
                " seq, boot_id, created_mono, metadata, clock_synced) VALUES (?,?,?,?,?,?,0,?,?,?,?,?)",
                (event_id, data["cid"], float(data["created_at"]), int(data.get("size_bytes") or 0),
                 int(bool(data.get("has_video", True))), data.get("sha256"), seq, data.get("boot_id"),
                 data.get("created_mono"), json.dumps(data["metadata"]),
                 None if synced is None else int(bool(synced))))

    def _record(self, event_id: str) -> dict[str, Any] | None:
        """A queued clip as its sidecar holds it, from its row (the source of truth); None if not queued.
        Metadata a row lacks (queued by a build before format 2, its sidecar since lost) is the least
        that identifies the clip: its event id, CID and video hash."""
        assert self._db is not None
        row = self._db.execute(f"SELECT {_ROW} FROM queue WHERE event_id=?", (event_id,)).fetchone()
        if row is None:
            return None
        cid, meta, created, has_video, sha, size, boot, mono, synced = row
        metadata = json.loads(meta) if meta else self._sidecar_metadata(event_id, cid, sha, size)
        return {"cid": cid, "metadata": metadata, "created_at": created, "has_video": bool(has_video), "sha256": sha,
                "size_bytes": size, "boot_id": boot, "created_mono": mono,
                "clock_synced": None if synced is None else bool(synced)}

    def _sidecar_metadata(self, event_id: str, cid: str, sha: str | None, size: int) -> dict[str, Any]:
        try:
            return read_sidecar(self.clips / f"{event_id}.json")["metadata"]
        except (OSError, ValueError, KeyError, TypeError):
            clip = {"sha256": sha, "size_bytes": size} if sha else {}
            return {"schema_version": SCHEMA_VERSION, "event_id": event_id, "cid": cid, "clip": clip}

    def restore_sidecar(self, event_id: str) -> bool:
        """Write a clip's sidecar again from its row (lost, or torn by a power cut); False if not queued."""
        with self._lock:
            data = self._record(event_id)
            if data is None:
                return False
            write_sidecar(self.tmp / f"{event_id}.json.part", self.clips / f"{event_id}.json", data)
            fsync_path(self.clips)
            return True

    # --- putting --------------------------------------------------------------------------------

    def part_path(self, event_id: str) -> Path:
        """Where the clip maker writes a clip before `put` hands it over."""
        if not safe_id(event_id):
            raise ValueError("event id must be alphanumeric with dashes")
        return self.tmp / f"{event_id}.mp4.part"

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> bool:
        """Make the clip durable and enqueue it. False when it was not kept: the spool is full and
        on_full is reject_new, or the disk refused the write; either way counted and logged."""
        if not safe_id(event_id):
            raise ValueError("event id must be alphanumeric with dashes")
        try:
            size = video_part.stat().st_size if video_part is not None else 0
        except OSError as exc:
            self._count_drop("write_error", cid, event_id, f"clip file unreadable: {exc.strerror or exc}")
            return False
        sha = (metadata.get("clip") or {}).get("sha256") if video_part is not None else None
        with self._lock:
            if self._db is None:
                log.error("spool closed: clip not queued cid=%s clip=%s", cid, event_id)
                return False
            try:
                if not self._make_room(size, cid, event_id):
                    if video_part is not None:
                        video_part.unlink(missing_ok=True)
                    return False
            except (OSError, sqlite3.Error) as exc:
                log.error("spool: cannot check bounds error=%s cid=%s clip=%s", exc, cid, event_id)
            for _ in range(_ENOSPC_DROPS + 1):
                try:
                    self._write(event_id, cid, metadata, video_part, size, sha)
                    break
                except (OSError, sqlite3.Error) as exc:
                    self._undo_write(event_id, video_part)
                    full = is_disk_full(exc)
                    self.disk_full = self.disk_full or full
                    if full and self.cfg.on_full == "drop_oldest" and self._drop_oldest("disk_full"):
                        continue
                    if video_part is not None:
                        video_part.unlink(missing_ok=True)
                    self._count_drop("disk_full" if full else "write_error", cid, event_id, str(exc))
                    return False
            self._update_gauges()
        log.info("queued cid=%s clip=%s bytes=%d", cid, event_id, size)
        return True

    def _write(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None, size: int,
               sha: str | None) -> None:
        """Both files are made durable under temporary names first; the sidecar's rename into clips/ is
        the commit point (recovery finishes the clip's own rename if a crash falls in between)."""
        if video_part is not None and video_part.exists():
            fsync_path(video_part)
        # the sidecar holds everything the row will, so a crash before the row is inserted loses nothing
        data = {"cid": cid, "metadata": metadata, "created_at": self._wall(), "has_video": video_part is not None,
                "sha256": sha, "size_bytes": size, "boot_id": boot_id(), "created_mono": self._monotonic(),
                "clock_synced": clock_sync.synchronized()}
        write_sidecar(self.tmp / f"{event_id}.json.part", self.clips / f"{event_id}.json", data)
        if video_part is not None and video_part.exists():
            os.replace(video_part, self.clips / f"{event_id}.mp4")
        fsync_path(self.clips)
        self.insert(event_id, data)

    def _undo_write(self, event_id: str, video_part: Path | None) -> None:
        """After a failed write: the clip goes back to where the caller left it, nothing half-queued stays."""
        mp4 = self.clips / f"{event_id}.mp4"
        with contextlib.suppress(OSError):
            if video_part is not None and mp4.exists() and not video_part.exists():
                os.replace(mp4, video_part)
        for p in (self.tmp / f"{event_id}.json.part", self.clips / f"{event_id}.json"):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
        with contextlib.suppress(sqlite3.Error):
            assert self._db is not None
            self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))

    def _count_drop(self, reason: str, cid: str, event_id: str, detail: str = "") -> None:
        """Every clip the spool gives up is counted by reason in the queue file (`spool status` shows
        the counts across restarts), in the metrics and in the log, with its CID and clip id."""
        self.metrics.inc("edge_agent_spool_dropped_total", reason=reason)
        if self._db is not None and not self.reader:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute(
                    "INSERT INTO drops (reason, count, last_at, last_cid, last_event_id) VALUES (?,1,?,?,?) "
                    "ON CONFLICT(reason) DO UPDATE SET count=count+1, last_at=excluded.last_at, "
                    "last_cid=excluded.last_cid, last_event_id=excluded.last_event_id",
                    (reason, time.time(), cid, event_id))
        log.error("spool: dropped cid=%s clip=%s reason=%s%s", cid, event_id, reason,
                  f" error={detail}" if detail else "")

    def totals(self) -> tuple[int, int]:
        if self._db is None:
            return 0, 0
        n, b = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM queue").fetchone()
        return int(n), int(b)

    def _free_bytes(self) -> float:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return float("inf")

    def _make_room(self, size: int, cid: str, event_id: str) -> bool:
        """Enforce the bounds before a clip of `size` bytes joins. The new clip's file is already on
        this disk (in tmp/), so free space is compared as it is, not less the clip."""
        self.expire()
        while True:
            _, used = self.totals()
            over_bytes = used + size > self.cfg.max_bytes
            low_disk = self._free_bytes() < self.cfg.min_free_bytes
            if not over_bytes and not low_disk:
                return True
            reason = "max_bytes" if over_bytes else "min_free_bytes"
            if self.cfg.on_full == "reject_new" or not self._drop_oldest(reason):
                self._count_drop(f"{reason}_rejected_new", cid, event_id)
                return False

    def _drop_oldest(self, reason: str) -> bool:
        assert self._db is not None
        oldest = self._db.execute("SELECT event_id, cid FROM queue ORDER BY seq LIMIT 1").fetchone()
        if oldest is None:
            return False
        self._remove(oldest[0])
        self._count_drop(f"{reason}_dropped_oldest", oldest[1], oldest[0])
        return True

    def age_s(self, created_at: float, boot: str | None, mono: float | None, stamped_synced: bool | None,
              synced_now: bool | None) -> float | None:
        """How long a clip has been queued, or None when nobody can tell. Within the boot that queued it:
        the monotonic clock, which no clock step moves. Across a reboot: the wall clock, but only when
        it was synchronised both when the clip was queued and now. A Pi without a real-time clock
        boots days or a year behind until NTP corrects it; a clip stamped then has no known age, and
        an unknown age never expires a clip (spool.max_bytes still bounds the queue)."""
        if boot is not None and mono is not None and boot == boot_id():
            return max(0.0, self._monotonic() - mono)
        if stamped_synced and synced_now:
            return self._wall() - created_at
        return None

    def expire(self) -> None:
        if self._db is None:
            return
        self._next_expire = self._monotonic() + _EXPIRE_EVERY_S
        rows = self._db.execute(
            "SELECT event_id, cid, created_at, boot_id, created_mono, clock_synced FROM queue").fetchall()
        synced_now = clock_sync.synchronized() if rows else None
        for event_id, cid, created, boot, mono, stamped_synced in rows:
            age = self.age_s(created, boot, mono, None if stamped_synced is None else bool(stamped_synced),
                             synced_now)
            if age is not None and age > self.cfg.max_age_s:
                self._remove(event_id)
                self._count_drop("max_age", cid, event_id, f"older than spool.max_age_s={self.cfg.max_age_s:g}")

    # --- taking ---------------------------------------------------------------------------------

    def head(self) -> Entry | None:
        """The oldest waiting clip, due or not (delivery is in order). Its CID and metadata come from
        the queue row: a lost or torn sidecar never holds a clip back."""
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute(f"SELECT {_COLUMNS} FROM queue ORDER BY seq LIMIT 1").fetchone()
            return None if row is None else self._entry(row)

    def next_due(self, now_mono: float) -> Entry | None:
        """The oldest clip if its retry time has come; None while it backs off (newer clips wait
        behind it: order is kept) or when the queue is empty."""
        with self._lock:
            if self._db is not None and now_mono >= self._next_expire:
                self.expire()
                self._update_gauges()
            entry = self.head()
            return entry if entry is not None and entry.retry_at <= now_mono else None

    def entries(self) -> list[Entry]:
        """Every waiting clip, oldest first (for `spool list`; metadata may be {} if unreadable)."""
        with self._lock:
            if self._db is None:
                return []
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM queue ORDER BY seq").fetchall()
            return [self._entry(r) for r in rows]

    def _entry(self, row: tuple[Any, ...]) -> Entry:
        event_id, cid, created, size, has_video, sha, attempts, last_error, meta = row
        metadata = json.loads(meta) if meta else self._sidecar_metadata(event_id, cid, sha, size)
        return Entry(event_id, cid, metadata, self.clips / f"{event_id}.mp4" if has_video else None, size, sha,
                     created, attempts, last_error, self._retry_at.get(event_id, 0.0))

    def mark_delivered(self, event_id: str) -> None:
        with self._lock:
            if self._db is None:
                log.warning("spool closed: delivery of clip=%s not recorded (it will be sent again)", event_id)
                return
            self._remove(event_id)
            self._update_gauges()

    def mark_failed(self, event_id: str, error: str, retry_at_mono: float | None = None) -> None:
        """Count a failed attempt; the clip is not due again before `retry_at_mono` (monotonic)."""
        with self._lock:
            if self._db is None:
                return
            # the queue is read by `spool status` and tickets: never a login an error quoted from a URL
            cur = self._db.execute("UPDATE queue SET attempts = attempts + 1, last_error = ? WHERE event_id=?",
                                   (redact(error)[:500], event_id))
            if cur.rowcount and retry_at_mono is not None:
                self._retry_at[event_id] = retry_at_mono

    def quarantine(self, event_id: str, reason: str, hint: str = "") -> None:
        """Take a clip out of the queue into quarantine/ (`spool requeue` brings it back). `hint`, what to
        fix before requeueing, ends the one log line."""
        with self._lock:
            if self._db is None:
                return
            record = self._record(event_id)
            if record is not None:
                # quarantine/ gets the row's copy, whatever became of the sidecar: `spool requeue` reads it
                with contextlib.suppress(OSError):
                    write_sidecar(self.tmp / f"{event_id}.json.part", self.clips / f"{event_id}.json", record)
            self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))
            self._retry_at.pop(event_id, None)
            self.quarantine_files(event_id, reason, cid=record["cid"] if record else None, hint=hint)
            self._update_gauges()

    def drop_video(self, event_id: str, reason: str) -> Entry | None:
        """The clip's video is missing or damaged: set what is left of it aside in quarantine/ (as
        `<id>.video-lost.mp4`, for whoever wants to look) and keep the event queued CID-only, with
        `metadata.clip.error` saying why. The CID is what the factory needs; it is never dropped
        for want of its video. None if the event is no longer queued."""
        with self._lock:
            if self._db is None:
                return None
            side = self.clips / f"{event_id}.json"
            data = self._record(event_id)
            if data is None:
                return None
            mp4 = self.clips / f"{event_id}.mp4"
            if mp4.exists():
                try:
                    os.replace(mp4, self.quarantine_dir / f"{event_id}.video-lost.mp4")
                    (self.quarantine_dir / f"{event_id}.video-lost.reason").write_text(reason + "\n", "utf-8")
                except OSError:
                    mp4.unlink(missing_ok=True)
            clip = data["metadata"].get("clip") or {}
            kept = {k: clip[k] for k in ("start_at", "end_at", "duration_s") if k in clip}
            data["metadata"]["clip"] = {**kept, "error": f"video lost on the device: {reason}"}
            data.update(has_video=False, sha256=None, size_bytes=0)
            tmp = self.tmp / f"{event_id}.json.part"
            try:
                write_sidecar(tmp, side, data)
                fsync_path(self.clips)
            except OSError as exc:  # e.g. disk full: the old sidecar stays; it is still sent CID-only below
                tmp.unlink(missing_ok=True)
                log.error("spool: cannot rewrite metadata of clip=%s error=%s", event_id, exc.strerror or exc)
            self._db.execute("UPDATE queue SET has_video=0, size_bytes=0, sha256=NULL, metadata=? WHERE event_id=?",
                             (json.dumps(data["metadata"]), event_id))
            row = self._db.execute(f"SELECT {_COLUMNS} FROM queue WHERE event_id=?", (event_id,)).fetchone()
            if row is None:
                return None
            self._update_gauges()
            return self._entry(row)

    def _remove(self, event_id: str) -> None:
        """Row first: a crash after it leaves an orphan sidecar, which recovery re-sends (a duplicate
        the server dedupes), never a row pointing at nothing."""
        assert self._db is not None
        try:
            self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))
        except sqlite3.OperationalError:
            # a full disk: even a delete needs room in the WAL. The clip's files go first to make that
            # room; a crash right now leaves a row without files, which recovery removes.
            self._unlink_files(event_id)
            self._db.execute("DELETE FROM queue WHERE event_id=?", (event_id,))
        self._retry_at.pop(event_id, None)
        self._unlink_files(event_id)

    def _unlink_files(self, event_id: str) -> None:
        """The sidecar first: it is what recovery re-sends from. A crash between the two then leaves a
        video without sidecar (set aside by recovery), never a delivered clip sent again without it."""
        for suffix in (".json", ".mp4"):
            try:
                (self.clips / f"{event_id}{suffix}").unlink(missing_ok=True)
            except OSError as exc:
                log.error("spool: cannot delete %s%s error=%s", event_id, suffix, exc.strerror or exc)

    def quarantine_files(self, event_id: str, reason: str, cid: str | None = None, hint: str = "") -> bool:
        """Move a clip's files to quarantine/ with a .reason note; False when there was nothing to move."""
        moved = False
        for suffix in (".mp4", ".json"):
            src = self.clips / f"{event_id}{suffix}"
            if not src.exists():
                continue
            try:
                os.replace(src, self.quarantine_dir / src.name)
                moved = True
            except OSError as exc:
                log.error("spool: cannot quarantine %s error=%s", src.name, exc.strerror or exc)
        if moved:
            with contextlib.suppress(OSError):
                (self.quarantine_dir / f"{event_id}.reason").write_text(reason + "\n", encoding="utf-8")
            self.metrics.inc("edge_agent_spool_quarantined_total")
            log.error("spool: quarantined cid=%s clip=%s reason=%s%s", cid or "?", event_id, reason,
                      f" -> {hint}" if hint else "")
        return moved

    def requeue(self) -> int:
        """Move quarantined clips that still have their metadata back to the end of the queue."""
        n = 0
        with self._lock:
            if self._db is None:
                return 0
            for side in sorted(self.quarantine_dir.glob("*.json"), key=sidecar_created_at):
                event_id = side.stem
                if not safe_id(event_id):
                    continue
                try:
                    read_sidecar(side)
                except (OSError, ValueError, KeyError, TypeError):
                    # torn (set aside so by a build whose queue row did not keep the metadata): the CID
                    # it still starts with sends the clip with its video
                    salvaged = salvage_sidecar(side, event_id, self.quarantine_dir / f"{event_id}.mp4")
                    if salvaged is None:
                        continue
                    with contextlib.suppress(OSError):
                        write_sidecar(self.tmp / f"{event_id}.json.part", side, salvaged)
                try:
                    mp4 = self.quarantine_dir / f"{event_id}.mp4"
                    if mp4.exists():
                        os.replace(mp4, self.clips / mp4.name)
                    os.replace(side, self.clips / side.name)
                    (self.quarantine_dir / f"{event_id}.reason").unlink(missing_ok=True)
                except OSError as exc:
                    log.error("spool requeue: cannot move clip=%s error=%s", event_id, exc.strerror or exc)
                    continue
                n += reenqueue(self, self.clips / side.name)
            with contextlib.suppress(OSError):
                fsync_path(self.clips)
            self._update_gauges()
        return n

    # --- introspection --------------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        free = int(min(self._free_bytes(), 2**62))
        full = self.disk_full or free < _FULL_BELOW_BYTES
        self.metrics.set("edge_agent_spool_disk_free_bytes", free)
        held = quarantined_count(self.quarantine_dir)
        with self._lock:
            if self._db is None:
                return SpoolStatus(0, 0, None, None, held, free_bytes=free, disk_full=full,
                                   quarantine_reason=newest_quarantine_reason(self.quarantine_dir))
            n, b = self.totals()
            oldest = self._db.execute("SELECT MIN(created_at) FROM queue").fetchone()[0]
            err = self._db.execute("SELECT last_error FROM queue WHERE last_error IS NOT NULL ORDER BY seq LIMIT 1"
                                   ).fetchone()
            try:
                dropped = dict(self._db.execute("SELECT reason, count FROM drops ORDER BY reason").fetchall())
            except sqlite3.Error:  # a queue file from before drops were recorded, opened read-only
                dropped = {}
        return SpoolStatus(n, b, oldest, err[0] if err else None, held, dropped, free, full,
                           newest_quarantine_reason(self.quarantine_dir))

    # --- requests from commands while the agent owns the spool ----------------------------------

    def serve_requests(self) -> None:
        """The owner answers what commands asked (`spool requeue` beside the running agent); cheap
        enough to call from the uploader's loop, at most once a second."""
        if not self.owner or time.monotonic() < self._next_request_check:
            return
        self._next_request_check = time.monotonic() + 1.0
        req = self.root / REQUEUE_REQUEST
        if not req.exists():
            return
        n = self.requeue()
        log.info("spool: requeued %d clip(s) at the request of `edge-agent spool requeue`", n)
        with contextlib.suppress(OSError):
            (self.root / REQUEUE_ANSWER).write_text(f"{n}\n", encoding="ascii")
            req.unlink()

    def _update_gauges(self) -> None:
        n, b = self.totals()
        self.metrics.set("edge_agent_spool_clips", n)
        self.metrics.set("edge_agent_spool_bytes", b)

    def update_config(self, cfg: SpoolConfig) -> None:
        """Live reload of the bounds (they apply at the next put); the folder itself is restart-only."""
        with self._lock:
            self.cfg = cfg.model_copy(update={"dir": self.cfg.dir})
            self._next_expire = 0.0

    def close(self) -> None:
        """Close the queue and give up ownership. Later calls are harmless no-ops (an uploader thread
        finishing a request after shutdown must not crash: its clip is simply sent again next time)."""
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
