"""Opening a spool's queue and bringing disk and queue back in line after a crash (docs/architecture.md section 7).

Only the owner runs this, at open: it removes `.part` files the owner's clip worker may be
writing, so no other process may. It never refuses to start: a damaged queue file goes to
quarantine/ and the queue is rebuilt from the clips' sidecars; a queue file that cannot be opened
for another reason (a full disk, an I/O error) stays where it is and the queue is kept in memory
until the next start; a clip whose bytes no longer match is set aside or goes out CID-only.
A reader (`spool status` beside the running agent) opens the queue read-only, or lists the
sidecars when even that fails, and changes no file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.delivery.spool_files import (
    bytes_in,
    disk_full_note,
    fsync_path,
    is_corrupt,
    is_disk_full,
    read_sidecar,
    sha256_file,
    sidecar_created_at,
)
from edge_agent.delivery.spool_format import FORMAT, SpoolTooNew, prepare, probe, version_of
from edge_agent.metrics import Metrics

if TYPE_CHECKING:
    from edge_agent.delivery.spool import Spool

# the spool's lines keep one logger name, wherever in the package the code lives
log = logging.getLogger("edge_agent.delivery.spool")

# check_row's prefix for a problem with the video alone (the event then goes out CID-only)
_VIDEO_PROBLEM = "video: "


def connect(path: Path) -> sqlite3.Connection:
    """The queue file at `path` (or ":memory:"), in this build's format: an older one is migrated in
    place; SpoolTooNew, before anything is written, when a newer build made it."""
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    try:
        # refused before the journal mode is set: that alone would write to a newer build's file
        if str(path) != ":memory:" and version_of(db) > FORMAT:
            raise SpoolTooNew(path.parent, version_of(db))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        prepare(db, None if str(path) == ":memory:" else path.parent)
    except (sqlite3.DatabaseError, SpoolTooNew):
        db.close()
        raise
    return db


def open_queue(root: Path, clips: Path, quarantine_dir: Path, metrics: Metrics) -> tuple[sqlite3.Connection, bool]:
    """The owner's queue, and whether opening it met a full disk."""
    path = root / "queue.sqlite3"
    try:
        db = connect(path)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.execute("SELECT COUNT(*) FROM queue").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        return db, False
    except sqlite3.Error as exc:
        if not is_corrupt(exc):
            # a full disk or an I/O error: the queue file is healthy and stays where it is; the
            # queue is rebuilt in memory from the clips' sidecars, so delivery (which frees space)
            # goes on, and the next start uses the file again
            disk_full = is_disk_full(exc)
            log.error("spool queue file cannot be opened error=%s%s: keeping the queue in memory until the "
                      "next start", exc, f" ({disk_full_note(root, bytes_in(clips))})" if disk_full else "")
            metrics.inc("edge_agent_spool_recovered_total", reason="queue_in_memory")
            return connect(Path(":memory:")), disk_full
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"  # two in a second stay apart
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(path) + suffix)
            if p.exists():
                try:
                    os.replace(p, quarantine_dir / f"queue.sqlite3{suffix}.corrupt-{stamp}")
                except OSError:
                    p.unlink(missing_ok=True)
        log.error("spool queue file unreadable error=%s: moved to quarantine, rebuilding from clip sidecars",
                  exc)
        metrics.inc("edge_agent_spool_recovered_total", reason="queue_rebuilt")
        try:
            return connect(path), False
        except sqlite3.Error as again:
            log.error("spool queue file cannot be created error=%s: keeping the queue in memory until the "
                      "next start (clips and their sidecars stay on disk)", again)
            metrics.inc("edge_agent_spool_recovered_total", reason="queue_in_memory")
            return connect(Path(":memory:")), False


def open_readonly(root: Path, clips: Path) -> sqlite3.Connection | None:
    """A reader's view of the queue, changing no file; None when there is no queue file yet."""
    path = root / "queue.sqlite3"
    if not path.exists():
        return None
    probe(root)  # SpoolTooNew: a newer build's queue is not read, and nothing is created beside it
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False,
                             isolation_level=None, timeout=30)
        if version_of(db) > FORMAT:
            found = version_of(db)
            db.close()
            raise SpoolTooNew(root, found)
        db.execute("SELECT COUNT(*) FROM queue").fetchone()
        if version_of(db) < FORMAT:  # the owner migrates it at its next start; a reader changes nothing
            return _copy_of_older(db)
        return db
    except sqlite3.Error as exc:
        # e.g. a full disk, where SQLite cannot make the shared-memory file a WAL reader needs: the
        # sidecars say the same as the queue, so read those instead of failing
        log.warning("spool queue file not readable (%s): listing the clips from their sidecars", exc)
        return queue_from_sidecars(clips)


def _copy_of_older(old: sqlite3.Connection) -> sqlite3.Connection:
    """An older format's queue as an in-memory queue of this format (columns it lacks are NULL)."""
    db = connect(Path(":memory:"))
    cols = "event_id, cid, created_at, size_bytes, has_video, sha256, attempts, last_error, seq"
    db.executemany(f"INSERT INTO queue ({cols}) VALUES (?,?,?,?,?,?,?,?,?)",
                   old.execute(f"SELECT {cols} FROM queue").fetchall())
    with contextlib.suppress(sqlite3.Error):  # a queue file from before drops were recorded
        db.executemany("INSERT INTO drops VALUES (?,?,?,?,?)", old.execute(
            "SELECT reason, count, last_at, last_cid, last_event_id FROM drops").fetchall())
    old.close()
    return db


def queue_from_sidecars(clips: Path) -> sqlite3.Connection:
    """An in-memory queue built from clips/*.json alone, changing no file."""
    db = connect(Path(":memory:"))
    for side in sorted(clips.glob("*.json"), key=sidecar_created_at):
        try:
            data = read_sidecar(side)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queue").fetchone()[0]
        db.execute("INSERT INTO queue (event_id, cid, created_at, size_bytes, has_video, sha256, attempts, seq,"
                   " metadata) VALUES (?,?,?,?,?,?,0,?,?)",
                   (side.stem, data["cid"], float(data["created_at"]), int(data.get("size_bytes") or 0),
                    int(bool(data.get("has_video", True))), data.get("sha256"), seq, json.dumps(data["metadata"])))
    return db


def recover(spool: Spool) -> None:
    """Bring disk and queue back in line after a crash. Each clip is handled on its own, so one bad
    file (or an I/O error reading it) never stops the others, nor the start."""
    started = time.monotonic()
    with spool.exclusive():
        finish_interrupted_puts(spool.clips, spool.tmp)
        for part in list(spool.tmp.iterdir()) + list(spool.clips.glob("*.part")):
            try:
                part.unlink()
                log.info("spool recovery: removed unfinished file %s", part.name)
            except OSError as exc:
                log.error("spool recovery: cannot remove %s error=%s", part.name, exc.strerror or exc)
        for event_id, cid, has_video, sha, size in spool.rows():
            restore_sidecar(spool, event_id, cid)
            try:
                problem = check_row(spool.clips, event_id, has_video, sha, size)
            except Exception as exc:  # never refuse to start
                problem = f"cannot check: {exc}"
            if problem is None:
                continue
            if problem.startswith(_VIDEO_PROBLEM):  # the metadata is sound: the CID still goes out
                spool.drop_video(event_id, problem[len(_VIDEO_PROBLEM):])
                continue
            spool.forget(event_id)
            if not spool.quarantine_files(event_id, problem):
                spool.metrics.inc("edge_agent_spool_dropped_total", reason="lost")
                log.error("spool recovery: clip lost cid=%s clip=%s reason=%s", cid, event_id, problem)
        known = {row.event_id for row in spool.rows()}
        orphans = [side for side in spool.clips.glob("*.json") if side.stem not in known]
        for side in sorted(orphans, key=sidecar_created_at):  # keep delivery in the order clips were made
            reenqueue(spool, side)
        for mp4 in spool.clips.glob("*.mp4"):
            if not (spool.clips / f"{mp4.stem}.json").exists():
                spool.quarantine_files(mp4.stem, "clip without metadata sidecar (a delivery or quarantine "
                                                  "interrupted by a crash: usually already delivered)")
        with contextlib.suppress(OSError):
            fsync_path(spool.clips)
            fsync_path(spool.quarantine_dir)
        spool.expire()
    n, b = spool.totals()
    log.info("spool ready dir=%s clips=%d bytes=%d recovery_s=%.2f", spool.root, n, b, time.monotonic() - started)


def finish_interrupted_puts(clips: Path, tmp: Path) -> None:
    """A crash between a put's two renames leaves the sidecar in clips/ and the clip, whole and
    fsynced, still in tmp/: move it in when its bytes match the sidecar."""
    for side in clips.glob("*.json"):
        part = tmp / f"{side.stem}.mp4.part"
        if not part.exists() or (clips / f"{side.stem}.mp4").exists():
            continue
        try:
            data = read_sidecar(side)
            whole = (data.get("has_video") and part.stat().st_size == data.get("size_bytes")
                     and (not data.get("sha256") or sha256_file(part) == data["sha256"]))
            if whole:
                os.replace(part, clips / f"{side.stem}.mp4")
                log.info("spool recovery: finished an interrupted put clip=%s", side.stem)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("spool recovery: cannot finish put clip=%s error=%s", side.stem, exc)


def restore_sidecar(spool: Spool, event_id: str, cid: str) -> None:
    """The queue row is the source of truth and the sidecar its copy: a sidecar lost or torn (a power cut
    on an SD card) is written again from the row, so the clip goes out with its CID and video."""
    side = spool.clips / f"{event_id}.json"
    try:
        read_sidecar(side)
        return
    except FileNotFoundError:
        why = "missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = f"unreadable: {exc}"
    try:
        spool.restore_sidecar(event_id)
        spool.metrics.inc("edge_agent_spool_recovered_total", reason="sidecar_restored")
        log.warning("spool recovery: sidecar of cid=%s clip=%s %s: written again from the queue", cid, event_id, why)
    except OSError as exc:  # the row still holds it all: delivery reads the row, not the sidecar
        log.error("spool recovery: cannot rewrite the sidecar of cid=%s clip=%s error=%s", cid, event_id,
                  exc.strerror or exc)


def check_row(clips: Path, event_id: str, has_video: bool, sha: str | None, size: int) -> str | None:
    """Why a queued clip's video cannot be sent as it is, or None when it is sound. (Its metadata is in
    its row: never a reason to hold the clip back.)"""
    mp4 = clips / f"{event_id}.mp4"
    if not has_video:
        return None
    if not mp4.exists():
        return _VIDEO_PROBLEM + "clip file missing after restart"
    try:
        actual = mp4.stat().st_size
        if actual != size:
            return _VIDEO_PROBLEM + f"clip is {actual} bytes, {size} were queued (torn write?)"
        if sha and sha256_file(mp4) != sha:
            return _VIDEO_PROBLEM + "clip bytes do not match their sha256 (torn write or bit rot?)"
    except OSError as exc:
        return _VIDEO_PROBLEM + f"clip unreadable: {exc.strerror or exc}"
    return None


def reenqueue(spool: Spool, side: Path) -> bool:
    """Queue a clip again from its sidecar alone (an orphan after a crash, or a clip `spool requeue`
    brought back); a sidecar that cannot be read sends the clip to quarantine/."""
    event_id = side.stem
    try:
        data = read_sidecar(side)
        cid = data["cid"]
        has_video = bool(data.get("has_video", True))
        sha = data.get("sha256")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        spool.quarantine_files(event_id, f"cannot re-enqueue: {exc}")
        return False
    mp4 = spool.clips / f"{event_id}.mp4"
    size = 0
    problem = None
    if has_video:
        try:
            size = mp4.stat().st_size
            if sha and sha256_file(mp4) != sha:
                problem = "clip bytes do not match their sha256"
        except OSError as exc:
            problem = f"clip file unreadable: {exc.strerror or exc}"
    spool.insert(event_id, {**data, "size_bytes": size})
    spool.metrics.inc("edge_agent_spool_recovered_total", reason="orphan_reenqueued")
    log.info("spool: re-enqueued cid=%s clip=%s", cid, event_id)
    if problem is not None:
        spool.drop_video(event_id, problem)
    return True
