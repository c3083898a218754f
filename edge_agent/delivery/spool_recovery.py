"""Opening a spool's queue and bringing disk and queue back in line after a crash (docs/architecture.md section 7).

Only the owner runs this, at open: it removes `.part` files the owner's clip worker may be
writing, so no other process may. It never refuses to start: a damaged queue file goes to
quarantine/ and the queue is rebuilt from the clips' sidecars; a queue file that cannot be opened
for another reason (a full disk, an I/O error) stays where it is and the queue is kept in memory
until the next start; a clip whose bytes no longer match is set aside or goes out CID-only. A read
committed at detection whose clip was never attached goes out CID-only, saying what stopped it.
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
from collections.abc import Callable
from pathlib import Path

from edge_agent.delivery.clip_files import ClipFiles
from edge_agent.delivery.queue_store import DELIVERED, EXPIRED, PENDING, QueueStore, Row
from edge_agent.delivery.spool_files import (
    boot_id,
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
from edge_agent.delivery.spool_quarantine import Quarantine
from edge_agent.metrics import Metrics

# the spool's lines keep one logger name, wherever in the package the code lives
log = logging.getLogger("edge_agent.delivery.spool")

# The spool's way to keep a read CID-only: (event id, why its video cannot go, whether the video is damaged
# and is set aside for people to look at).
WithoutVideo = Callable[[str, str, bool], object]

# clip.error of a read whose clip was not made when the agent stopped, by what stopped it: the boot it was
# made in tells a process that died (same boot) from a device that lost power or restarted
# how often a long recovery says how far it is (the daemon extends systemd's start timeout each time)
PROGRESS_EVERY_S = 5.0
STOPPED_BEFORE_CLIP = "edge-agent stopped (killed or crashed) before this read's clip was made: no video"
POWER_LOST_BEFORE_CLIP = "the device lost power or restarted before this read's clip was made: no video"
STOPPED_AT_SHUTDOWN = "edge-agent stopped before this read's clip was made (its stop ran out of time): no video"


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
        # checkpoints are the queue store's to run, off the commit that made the log long: a read's commit on
        # the detect thread never waits for one (QueueStore.checkpoint)
        db.execute("PRAGMA wal_autocheckpoint=0")
        prepare(db, None if str(path) == ":memory:" else path.parent)
    except (sqlite3.DatabaseError, SpoolTooNew):
        db.close()
        raise
    return db


def open_queue(root: Path, clips: Path, quarantine_dir: Path, metrics: Metrics) -> tuple[QueueStore, bool]:
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
        return QueueStore(db, path=path), False
    except sqlite3.Error as exc:
        if not is_corrupt(exc):
            # a full disk or an I/O error: the queue file is healthy and stays where it is; the
            # queue is rebuilt in memory from the clips' sidecars, so delivery (which frees space)
            # goes on, and the next start uses the file again
            disk_full = is_disk_full(exc)
            log.error("spool queue file cannot be opened error=%s%s: keeping the queue in memory until the "
                      "next start", exc, f" ({disk_full_note(root, bytes_in(clips))})" if disk_full else "")
            metrics.spool_recovered.labels(reason="queue_in_memory").inc()
            return QueueStore(connect(Path(":memory:")), memory=True), disk_full
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
        metrics.spool_recovered.labels(reason="queue_rebuilt").inc()
        try:
            return QueueStore(connect(path), path=path), False
        except sqlite3.Error as again:
            log.error("spool queue file cannot be created error=%s: keeping the queue in memory until the "
                      "next start (clips and their sidecars stay on disk)", again)
            metrics.spool_recovered.labels(reason="queue_in_memory").inc()
            return QueueStore(connect(Path(":memory:")), memory=True), False


def open_readonly(root: Path, clips: Path) -> QueueStore:
    """A reader's view of the queue, changing no file; None when there is no queue file yet."""
    path = root / "queue.sqlite3"
    if not path.exists():
        return QueueStore(None)
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
            return QueueStore(_copy_of_older(db))
        return QueueStore(db)
    except sqlite3.Error as exc:
        # e.g. a full disk, where SQLite cannot make the shared-memory file a WAL reader needs: the
        # sidecars say the same as the queue for every read with a clip, so read those instead of failing
        log.warning("spool queue file not readable (%s): listing the clips from their sidecars (reads still "
                    "waiting for their clip are not listed)", exc)
        return QueueStore(queue_from_sidecars(clips), memory=True)


def _copy_of_older(old: sqlite3.Connection) -> sqlite3.Connection:
    """An older format's queue as an in-memory queue of this format (columns it lacks are NULL)."""
    db = connect(Path(":memory:"))
    new = [r[1] for r in db.execute("PRAGMA table_info(queue)")]
    have = {r[1] for r in old.execute("PRAGMA table_info(queue)")}
    cols = ", ".join(c for c in new if c in have)
    marks = ", ".join("?" for c in new if c in have)
    db.executemany(f"INSERT INTO queue ({cols}) VALUES ({marks})", old.execute(f"SELECT {cols} FROM queue").fetchall())
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


def recover(store: QueueStore, files: ClipFiles, quarantine: Quarantine, metrics: Metrics,
            without_video: WithoutVideo, *, thorough: bool = True,
            progress: Callable[[int, int], object] | None = None) -> None:
    """Bring disk and queue back in line after a crash or a power cut. Each read is handled on its own, so
    one bad file (or an I/O error reading it) never stops the others, nor the start. `without_video` is
    the spool's way to keep a read CID-only (event id, why, whether its video is damaged). `thorough`:
    check every ready read's sidecar and video (after a crash or a power cut); after a clean stop only the
    reads a stop can leave (pending, delivered) and the files without a row are looked at, so a start on a
    backlog of 100k reads takes no longer than one on an empty spool. `progress(done, of)`, as it begins and
    then every few seconds (`PROGRESS_EVERY_S`): what a start waiting on this says to systemd."""
    started = time.monotonic()
    with store.exclusive():
        finish_interrupted_puts(files)
        for part in files.parts():
            try:
                part.unlink()
                log.info("spool recovery: removed unfinished file %s", part.name)
            except OSError as exc:
                log.error("spool recovery: cannot remove %s error=%s", part.name, exc.strerror or exc)
        rows = store.rows() if thorough else store.rows(PENDING) + store.rows(DELIVERED) + store.rows(EXPIRED)
        sidecars = list(files.sidecars())  # listed once: a backlog of 100k is 100k names
        of = 0
        if progress is not None:  # how much there is to do, only for whoever is told
            known = store.ids()
            of = len(rows) + sum(1 for side in sidecars if side.stem not in known)
            if of:
                progress(0, of)
        told = time.monotonic()
        for n, row in enumerate(rows, 1):
            try:
                _recover_row(row, store, files, quarantine, metrics, without_video)
            except Exception as exc:  # never refuse to start
                log.error("spool recovery: cannot check cid=%s clip=%s error=%s", row.cid, row.event_id, exc)
            if progress is not None and time.monotonic() - told >= PROGRESS_EVERY_S:
                told = time.monotonic()
                progress(n, of)
        done = len(rows)
        del rows
        known = store.ids()  # as the rows' recovery left them (it may set a row and its files aside)
        orphans = [side for side in sidecars if side.stem not in known and side.exists()]
        for n, side in enumerate(sorted(orphans, key=sidecar_created_at), done + 1):  # in the order clips were made
            reenqueue(store, files, quarantine, metrics, without_video, side)
            if progress is not None and time.monotonic() - told >= PROGRESS_EVERY_S:
                told = time.monotonic()
                progress(n, of)
        known |= {side.stem for side in orphans}
        for mp4 in files.videos():
            if mp4.stem not in known and not files.sidecar(mp4.stem).exists():
                quarantine.set_aside(mp4.stem, "clip without metadata sidecar or queue row (left by a build "
                                               "that deleted a delivered clip's files before its row)")
        with contextlib.suppress(OSError):
            files.sync()
            fsync_path(quarantine.dir)
    n, pending, b = store.totals()
    log.info("spool ready dir=%s clips=%d bytes=%d recovery_s=%.2f%s", files.root, n, b, time.monotonic() - started,
             "" if thorough else " (clean stop: files checked before sending)")


def _recover_row(row: Row, store: QueueStore, files: ClipFiles, quarantine: Quarantine, metrics: Metrics,
                 without_video: WithoutVideo) -> None:
    event_id = row.event_id
    if row.state in (DELIVERED, EXPIRED):
        # the server had it, or it was given up as too old (counted and logged then); a crash came between the
        # row's mark and its delete: finish the delete
        files.delete(event_id)
        store.delete(event_id)
        metrics.spool_recovered.labels(reason=f"{row.state}_deleted").inc()
        log.info("spool recovery: finished deleting %s cid=%s clip=%s", row.state, row.cid, event_id)
        return
    if row.state == PENDING:
        why = (STOPPED_BEFORE_CLIP if row.boot_id is not None and row.boot_id == boot_id()
               else POWER_LOST_BEFORE_CLIP)
        row = settle_pending(row, store, files, metrics, why)
        if row.state == PENDING:
            return
    if not row.has_video and files.delete_video(event_id):
        log.info("spool recovery: deleted the video of cid=%s clip=%s, queued without it", row.cid, event_id)
    _restore_sidecar(row, files, metrics)
    try:
        problem = check_video(files, row)
    except Exception as exc:  # never refuse to start
        problem = f"cannot check: {exc}"
    if problem is not None:
        without_video(event_id, problem, True)


def settle_pending(row: Row, store: QueueStore, files: ClipFiles, metrics: Metrics, why: str) -> Row:
    """A read committed at detection whose clip was not attached when the agent stopped: its clip, if the put
    got past its commit point (the sidecar in clips/); else the read goes out CID-only, `why` saying so."""
    try:
        side = read_sidecar(files.sidecar(row.event_id))
    except (OSError, ValueError, KeyError, TypeError):
        side = None
    if side is not None:
        store.attach(row.event_id, {**side, "size_bytes": files.size(row.event_id) or 0})
        metrics.spool_recovered.labels(reason="put_finished").inc()
        log.info("spool recovery: finished an interrupted put cid=%s clip=%s", row.cid, row.event_id)
        return store.get(row.event_id) or row
    store.without_video(row.event_id, {**row.metadata, "clip": {"error": why}})
    settled = store.get(row.event_id)
    if settled is not None:
        with contextlib.suppress(OSError):  # the row holds it all; recovery writes a missing sidecar again
            files.rewrite_sidecar(row.event_id, settled.record())
    metrics.spool_recovered.labels(reason="read_without_clip").inc()
    log.warning("spool recovery: read kept without its clip cid=%s clip=%s reason=%s", row.cid,
                row.event_id, why)
    return settled or row


def finish_interrupted_puts(files: ClipFiles) -> None:
    """A crash between a put's two renames leaves the sidecar in clips/ and the clip, whole and
    fsynced, still in tmp/: move it in when its bytes match the sidecar. Looked for from tmp/, which
    holds a few parts at most, never from clips/ (a backlog's every sidecar)."""
    for part in files.tmp.glob("*.mp4.part"):
        event_id = part.name.removesuffix(".mp4.part")
        side = files.sidecar(event_id)
        if not side.exists() or files.video(event_id).exists():
            continue
        try:
            data = read_sidecar(side)
            whole = (data.get("has_video") and part.stat().st_size == data.get("size_bytes")
                     and (not data.get("sha256") or sha256_file(part) == data["sha256"]))
            if whole:
                os.replace(part, files.video(event_id))
                log.info("spool recovery: finished an interrupted put clip=%s", event_id)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("spool recovery: cannot finish put clip=%s error=%s", event_id, exc)


def _restore_sidecar(row: Row, files: ClipFiles, metrics: Metrics) -> None:
    """The queue row is the source of truth and the sidecar its copy: a sidecar lost, torn (a power cut on
    an SD card) or behind its row (a crash between the row's change and the sidecar's) is written again."""
    agrees = files.sidecar_agrees(row.event_id, row.record())
    if agrees:
        return
    try:
        files.rewrite_sidecar(row.event_id, row.record())
    except OSError as exc:  # the row still holds it all: delivery reads the row, not the sidecar
        log.error("spool recovery: cannot rewrite the sidecar of cid=%s clip=%s error=%s", row.cid, row.event_id,
                  exc.strerror or exc)
        return
    if agrees is None:
        metrics.spool_recovered.labels(reason="sidecar_restored").inc()
        log.warning("spool recovery: sidecar of cid=%s clip=%s missing or unreadable: written again from the "
                    "queue", row.cid, row.event_id)


def check_video(files: ClipFiles, row: Row) -> str | None:
    """Why a queued read's video cannot be sent as it is, or None when it is sound (or it has none). Its
    metadata is in its row: never a reason to hold the read back."""
    if not row.has_video:
        return None
    mp4 = files.video(row.event_id)
    if not mp4.exists():
        return "clip file missing after restart"
    try:
        actual = mp4.stat().st_size
        if actual != row.size_bytes:
            return f"clip is {actual} bytes, {row.size_bytes} were queued (torn write?)"
        if row.sha256 and sha256_file(mp4) != row.sha256:
            return "clip bytes do not match their sha256 (torn write or bit rot?)"
    except OSError as exc:
        return f"clip unreadable: {exc.strerror or exc}"
    return None


def reenqueue(store: QueueStore, files: ClipFiles, quarantine: Quarantine, metrics: Metrics,
              without_video: WithoutVideo, side: Path) -> bool:
    """Queue a clip again from its sidecar alone (an orphan after a crash, or a clip `spool requeue`
    brought back); a sidecar that cannot be read sends the clip to quarantine/."""
    event_id = side.stem
    try:
        data = read_sidecar(side)
        cid = data["cid"]
        has_video = bool(data.get("has_video", True))
        sha = data.get("sha256")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        quarantine.set_aside(event_id, f"cannot re-enqueue: {exc}")
        return False
    mp4 = files.video(event_id)
    size = 0
    problem = None
    if has_video:
        try:
            size = mp4.stat().st_size
            if sha and sha256_file(mp4) != sha:
                problem = "clip bytes do not match their sha256"
        except OSError as exc:
            problem = f"clip file unreadable: {exc.strerror or exc}"
    store.add(event_id, {**data, "size_bytes": size})
    metrics.spool_recovered.labels(reason="orphan_reenqueued").inc()
    log.info("spool: re-enqueued cid=%s clip=%s", cid, event_id)
    if problem is not None:
        without_video(event_id, problem, True)
    return True
