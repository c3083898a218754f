"""The durable queue of reads and their clips, waiting for delivery (docs/architecture.md section 7).

A read lives here from the moment it is made: the detect stage commits it (`detected`, a `pending`
row) before it looks at the next frame, so a crash or a power cut after that sends its CID even if
its clip was never made. The clip stage then hands over the clip (`put`): its file and its sidecar
are made durable in clips/ (`ClipFiles`, the sidecar's rename is the commit point) and the row
becomes `ready`. The uploader takes ready reads oldest first; after the server's 2xx the row is
marked `delivered`, the files deleted, then the row, so a crash in between is finished by recovery,
never sent again nor set aside.

The spool's bounds (max_bytes, min_free_bytes, a full disk) apply to videos: a video that does not
fit is let go, counted in `video_drops`, and its read goes out CID-only with `clip.error` saying why.
Reads themselves are given up only past spool.max_age_s, or when not even a row can be written.

On open the owner recovers and never refuses to start (`spool_recovery`): parts are removed,
pending reads get their clip if its put got past the commit point or go out CID-only, files without
a row are re-enqueued, videos whose bytes no longer match their sha256 are set aside while their read
goes out CID-only, and a damaged queue file is rebuilt from the sidecars.

One process owns a spool (an flock on `spool.lock`, spool_lock): only the owner recovers, puts and
delivers. `edge-agent spool status` beside the service just reads, and `spool requeue` asks the owner
through a request file (spool_requests).

Retry timing lives in memory on the monotonic clock: after a restart every read is due at once,
which is what a restarted device should do. Ages for `spool.max_age_s` use the monotonic clock too
while the read was made in this boot, so an NTP jump on a Pi without a real-time clock does not make
fresh reads look a week old and drop them; across a reboot an age is known only if the wall clock
was synchronised when the read was queued and is now (`age_s`).

The parts: the rows (queue_store), the clip files (clip_files), quarantine/ (spool_quarantine), the
requests from commands (spool_requests), what runs at open (spool_recovery), the bounds and the disk's
reserve (spool_room); this module is the one way the pipeline, the uploader and the commands use them,
and decides what goes when something must.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import clock_sync
from edge_agent.config import Config, SpoolConfig
from edge_agent.delivery import spool_lock
from edge_agent.delivery.clip_files import ClipFiles
from edge_agent.delivery.queue_store import DELIVERED, EXPIRED, PENDING, READS, READY, VIDEOS, QueueStore, Row
from edge_agent.delivery.spool_files import boot_id, disk_full_note, fsync_path, is_disk_full, safe_id
from edge_agent.delivery.spool_format import SpoolError, SpoolTooNew, probe
from edge_agent.delivery.spool_quarantine import Quarantine, newest_quarantine_reason, quarantined_count
from edge_agent.delivery.spool_recovery import (
    STOPPED_AT_SHUTDOWN,
    open_queue,
    open_readonly,
    recover,
    reenqueue,
    settle_pending,
)
from edge_agent.delivery.spool_requests import RequestChannel
from edge_agent.delivery.spool_room import RESERVE_BYTES, Room, broken_bound
from edge_agent.metrics import Metrics
from edge_agent.redact import redact

log = logging.getLogger(__name__)

# expiring needs a scan of the queue: at most this often from next_due()
_EXPIRE_EVERY_S = 60.0
# a put that hits ENOSPC drops at most this many oldest videos to make room before it lets its own go
_ENOSPC_DROPS = 16
# Left by a clean stop (every read in its row, its files whole), so the next start checks only what a stop
# can leave; removed as the spool opens.
CLEAN_STOP = "clean-stop"


__all__ = ["Entry", "Spool", "SpoolBusy", "SpoolError", "SpoolStatus", "SpoolTooNew", "Stored"]


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
    pending: bool = False  # a read whose clip is being made: not sent yet
    # the moment it was queued, for its age (Spool.queued_age_s): the boot, the monotonic time, the clock's state
    boot_id: str | None = None
    created_mono: float | None = None
    clock_synced: bool | None = None


@dataclass
class SpoolStatus:
    clips: int  # reads waiting, those whose clip is being made included
    bytes: int
    oldest_at: float | None
    last_error: str | None
    quarantined: int
    dropped: dict[str, int] = field(default_factory=dict)  # reads given up, by reason, since the spool began
    free_bytes: int = 0
    disk_full: bool = False
    quarantine_reason: str | None = None  # why the newest quarantined clip was set aside
    pending: int = 0  # reads committed whose clip is not made yet
    videos_dropped: dict[str, int] = field(default_factory=dict)  # videos let go, their reads kept, by reason
    in_memory: bool = False  # the queue file could not be opened: the queue lasts until the next start
    # reads this Spool object gave up since it was opened, by reason: this process's share of `dropped`
    # (a run's own figure, e.g. replay's report; `dropped` is kept in the queue file across runs)
    dropped_since_open: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Stored:
    """What a sink did with a read's clip."""

    kept: bool  # the read is queued (or written, for a folder)
    video_error: str | None = None  # set when its video was let go: the read goes out CID-only, saying this

    def __bool__(self) -> bool:
        """A put is true when it kept the read."""
        return self.kept


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
    """The queue of reads and their clips. Thread-safe: the detect thread commits reads, the clip worker
    puts clips, the uploader takes and settles them, the CLI inspects."""

    def __init__(self, cfg: SpoolConfig, metrics: Metrics | None = None, *, reader: bool = False,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 progress: Callable[[int, int], object] | None = None):
        """The owner (the agent, replay, `spool flush` with no agent running) takes the spool's lock
        and recovers it; SpoolBusy when another process holds it. A reader (`spool status`/`list`)
        takes no lock, opens the queue read-only and never changes a file. `monotonic` and `wall` are
        the clocks a clip's age is read on (spool.max_age_s): a test passes its own. `progress(done, of)`
        hears how far a long recovery is (the daemon tells systemd to wait for it)."""
        self.cfg = cfg
        self._monotonic = monotonic
        self._wall = wall
        self.metrics = metrics or Metrics()
        self.root = Path(cfg.dir)
        self.files = ClipFiles(self.root)
        self.room = Room(self.root, self.files.tmp, reader=reader)
        self.quarantine_dir = self.root / "quarantine"
        self._quarantine = Quarantine(self.quarantine_dir, self.files, self.metrics)
        self._requests = RequestChannel(self.root)
        self.reader = reader
        self.disk_full = False  # the last write met a full disk
        self._drops_lock = threading.Lock()  # drops are counted under the queue's lock, and outside it
        self._dropped_since_open: Counter[str] = Counter()
        self._retry_at: dict[str, float] = {}  # event id -> monotonic time of its next attempt (uploader's)
        self._unsettled: dict[str, str] = {}  # reads whose put did not reach their row: why (next_due settles)
        self._next_expire = 0.0
        self._lock_fd: int | None = None
        self.store = QueueStore(None)
        if reader:
            # a spool not made yet reads as empty; one that is, or lies under, a regular file is a typo in
            # spool.dir, said as the owner would say it (not an empty spool on a disk of absurd size)
            blocker = _file_in_the_way(self.root)
            if blocker is not None:
                raise _unusable(self.root, os.strerror(errno.ENOTDIR) + f": {blocker} is a file")
            self.owner, self.owner_pid = False, spool_lock.owner_pid(self.root)
            self.store = open_readonly(self.root, self.files.clips)
            return
        probe(self.root)  # a newer build's spool is refused before any file is created, locked or moved
        try:
            self.files.make_folders()
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            fd, self.owner_pid = spool_lock.take(self.root)
            self.owner = fd is not None
            self._lock_fd = fd if fd is not None and fd >= 0 else None
        except OSError as exc:
            raise _unusable(self.root, exc.strerror or str(exc)) from exc
        if not self.owner:
            raise SpoolBusy(self.root, self.owner_pid)
        # a clean stop left its mark: only what a stop can leave needs looking at. Removed before anything
        # else is written, so a crash from here on is never taken for a clean stop
        clean = (self.root / CLEAN_STOP).exists()
        if clean:
            try:
                (self.root / CLEAN_STOP).unlink()
                fsync_path(self.root)
            except OSError:
                clean = False
        try:
            self.store, self.disk_full = open_queue(self.root, self.files.clips, self.quarantine_dir, self.metrics)
        except SpoolError:
            self.close()
            raise
        recover(self.store, self.files, self._quarantine, self.metrics, self._without_video_recovered,
                thorough=not clean, progress=progress)
        with self.store.exclusive():
            self._expire()
        self.update_gauges()  # makes the reserve file too

    @classmethod
    def open_reader(cls, cfg: SpoolConfig) -> Spool:
        return cls(cfg, reader=True)

    # --- a read, from detection to its clip -----------------------------------------------------

    def part_path(self, event_id: str) -> Path:
        """Where the clip maker writes a clip before `put` hands it over."""
        return self.files.part(event_id)

    def detected(self, event_id: str, cid: str, metadata: dict[str, Any]) -> bool:
        """Commit a read the moment it is made (one SQLite transaction, one fsync of its log): from here a
        crash or a power cut cannot lose it; its clip joins it through `put`. False when it could not be
        written (logged; its clip may still be)."""
        if not safe_id(event_id):
            raise ValueError("event id must be alphanumeric with dashes")
        record = self._record(cid, metadata, None, 0, None)
        try:
            self._row_write(lambda: self.store.add_read(event_id, record), cid, event_id)
        except sqlite3.Error as exc:
            self.disk_full = self.disk_full or is_disk_full(exc)
            self.metrics.reads_not_durable.inc()
            log.error("spool: read not committed cid=%s clip=%s error=%s (it is queued when its clip is made)",
                      cid, event_id, exc)
            return False
        if self.store.memory:  # the queue file could not be opened at start: a power cut loses this read
            self.metrics.reads_not_durable.inc()
            return False
        return True

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> Stored:
        """Make the read's clip durable and ready to deliver. A video that does not fit (spool bounds, a full
        disk) is let go, counted and logged, and the read goes out without it: its CID is never dropped
        for want of room. Not kept at all only when not even its row can be written. A put the disk or the
        queue file refuses half-way leaves the read's pending row, which the uploader's loop settles
        (`_settle_unsettled`): from the files that got through, or CID-only saying why."""
        if not safe_id(event_id):
            raise ValueError("event id must be alphanumeric with dashes")
        try:
            return self._put(event_id, cid, metadata, video_part)
        except (sqlite3.Error, OSError) as exc:
            if video_part is not None:
                with contextlib.suppress(OSError):
                    video_part.unlink(missing_ok=True)
            why = f"the spool could not take its clip: {getattr(exc, 'strerror', None) or exc}"
            return self._unsettle(event_id, cid, why)

    def _unsettle(self, event_id: str, cid: str, why: str) -> Stored:
        """A put that did not reach the read's row: settled from the uploader's loop while its pending row is
        there; a read with no row at all is lost, and counted."""
        try:
            held = self.store.get(event_id) is not None
        except sqlite3.Error:
            held = True  # the row cannot even be read now: assume the commit at detection holds it
        if not held:
            self._count_drop("write_error", cid, event_id, why)
            return Stored(False)
        self._unsettled[event_id] = why
        log.error("spool: clip of cid=%s clip=%s not queued (%s): its read is kept and settled from the uploader's "
                  "loop", cid, event_id, why)
        return Stored(True, f"video not kept on the device: {why}")

    def _settle_unsettled(self) -> None:
        """The uploader's loop: reads whose put did not reach their row get it, from the files that got through
        (their sidecar in clips/), or CID-only with the put's error."""
        for event_id, why in list(self._unsettled.items()):
            try:
                row = self.store.get(event_id)
                if row is not None and row.state == PENDING:
                    settle_pending(row, self.store, self.files, self.metrics, f"video not kept on the device: {why}")
            except (sqlite3.Error, OSError):
                continue  # tried again at the next pass
            self._unsettled.pop(event_id, None)

    def _put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> Stored:
        try:
            size = video_part.stat().st_size if video_part is not None else 0
        except OSError as exc:
            video_part, size = None, 0
            metadata = _clip_error(metadata, f"clip file unreadable: {exc.strerror or exc}")
        if not self.store.open:
            log.error("spool closed: clip not queued cid=%s clip=%s", cid, event_id)
            return Stored(False)
        video_error: str | None = None
        if video_part is not None:
            free = self.room.free_bytes()  # outside the lock: a statvfs lets go of the interpreter
            with self.store.exclusive():
                refused = self._make_room(size, cid, event_id, free)
            if refused is not None:
                video_part, video_error = self._let_video_go(video_part, cid, event_id, *refused)
        attempts = 0
        while True:
            has_video = video_part is not None
            record = self._record(cid, _clip_error(metadata, video_error) if video_error else metadata, video_part,
                                  size if has_video else 0, (metadata.get("clip") or {}).get("sha256"))
            try:
                self.files.commit(event_id, record, video_part)
                self.disk_full = False  # room again (the free-space floor still tells a nearly full disk)
                break
            except OSError as exc:
                self.files.undo(event_id, video_part)
                full = is_disk_full(exc)
                self.disk_full = self.disk_full or full
                attempts += 1
                if has_video and full and self.cfg.on_full == "drop_oldest" and attempts <= _ENOSPC_DROPS:
                    with self.store.exclusive():
                        dropped = self._drop_oldest_video("disk_full_dropped_oldest", "its disk was full")
                    if dropped:
                        continue
                if has_video:
                    why = disk_full_note(self.root, self.store.totals()[2]) if full else f"write failed: {exc}"
                    video_part, video_error = self._let_video_go(video_part, cid, event_id,
                                                                 "disk_full" if full else "write_error", why)
                    continue
                # not even the sidecar: the row alone holds the read (recovery writes its sidecar again)
                log.error("spool: cannot write the sidecar of cid=%s clip=%s error=%s", cid, event_id,
                          exc.strerror or exc)
                break
        try:
            self._row_write(lambda: self.store.attach(event_id, record), cid, event_id)
        except sqlite3.Error as exc:
            self.disk_full = self.disk_full or is_disk_full(exc)
            # its files, if they got through, attach when the read is settled; else it goes CID-only
            return self._unsettle(event_id, cid, f"its row could not be written: {exc}")
        self.update_gauges()
        self.store.checkpoint()
        log.info("queued cid=%s clip=%s bytes=%d%s", cid, event_id, size if video_part is not None else 0,
                 "" if video_error is None else " without video")
        return Stored(True, video_error)

    def _record(self, cid: str, metadata: dict[str, Any], video_part: Path | None, size: int,
                sha: str | None) -> dict[str, Any]:
        """A read's row as its sidecar holds it."""
        return {"cid": cid, "metadata": metadata, "created_at": self._wall(), "has_video": video_part is not None,
                "sha256": sha if video_part is not None else None, "size_bytes": size, "boot_id": boot_id(),
                "created_mono": self._monotonic(), "clock_synced": clock_sync.synchronized()}

    def _let_video_go(self, video_part: Path, cid: str, event_id: str, reason: str, why: str) -> tuple[None, str]:
        """A new clip's video the spool cannot keep: deleted, counted, and its read goes on CID-only."""
        video_part.unlink(missing_ok=True)
        self._count_video_drop(reason, cid, event_id, why)
        return None, f"video not kept on the device: {why}"

    def _row_write(self, write: Callable[[], object], cid: str, event_id: str) -> None:
        """A queue write that a full disk must not refuse. On SQLITE_FULL the log is checkpointed (its frames
        copied into the queue file, so the next commits write the log from its start again, in the room it
        has), and the write tried again; then the reserve file is given up to make room, and it is tried once
        more."""
        try:
            write()
            return
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
        self.disk_full = True
        self.store.checkpoint(every=0)
        try:
            write()
            return
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc) or not self.room.give_reserve():
                raise
        log.warning("spool: disk full: gave up the spool's %d kB reserve to keep cid=%s clip=%s (it is made "
                    "again once there is room)", RESERVE_BYTES >> 10, cid, event_id)
        self.store.checkpoint(every=0)
        write()

    # --- bounds ---------------------------------------------------------------------------------

    def _make_room(self, size: int, cid: str, event_id: str, free: float) -> tuple[str, str] | None:
        """Enforce the bounds (`spool_room.broken_bound`) before a video of `size` bytes joins: None when it
        fits (older videos dropped first with on_full=drop_oldest, when that can make it fit), else (reason,
        why) it does not. `free`: the disk's free bytes, read before the lock."""
        self._expire()
        while True:
            bound = broken_bound(self.cfg, self.store.totals()[2], size, free, self.room.reserve_given)
            if bound is None:
                return None
            if (self.cfg.on_full == "reject_new" or bound.hopeless
                    or not self._drop_oldest_video(f"{bound.reason}_dropped_oldest", bound.words)):
                return f"{bound.reason}_rejected_new", f"the spool is full ({bound.words})"
            if bound.low_disk:
                free = self.room.free_bytes()

    def _drop_oldest_video(self, reason: str, why: str) -> bool:
        """Let the oldest queued video go to make room (`why`: the bound it makes room under); its read
        stays queued CID-only. False when no queued read has a video left."""
        oldest = self.store.oldest_with_video()
        if oldest is None:
            return False
        try:
            self._without_video(oldest.event_id, f"video not kept on the device: dropped for newer clips ({why})")
        except sqlite3.Error as exc:
            log.error("spool: cannot record a dropped video cid=%s clip=%s error=%s", oldest.cid, oldest.event_id,
                      exc)
            return False  # its row still counts its bytes: no other video goes for this one
        self._count_video_drop(reason, oldest.cid, oldest.event_id, why)
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

    def _expire(self) -> None:
        """Reads older than spool.max_age_s are given up (their clip is made by then: pending reads wait).
        A scan of the queue: at most once a minute (`_EXPIRE_EVERY_S`; a quarter of a shorter max_age_s, so
        no read outlives it by much; at once after a bounds change)."""
        if not self.store.open or self.reader or self._monotonic() < self._next_expire:
            return
        self._next_expire = self._monotonic() + min(_EXPIRE_EVERY_S, self.cfg.max_age_s / 4)
        stamps = self.store.stamps(READY)
        synced_now = clock_sync.synchronized() if stamps else None
        for event_id, cid, created, boot, mono, synced in stamps:
            age = self.age_s(created, boot, mono, synced, synced_now)
            if age is not None and age > self.cfg.max_age_s:
                self._delete(event_id, EXPIRED)
                self._count_drop("max_age", cid, event_id, f"older than spool.max_age_s={self.cfg.max_age_s:g}")

    # --- taking ---------------------------------------------------------------------------------

    def head(self) -> Entry | None:
        """The oldest read ready to go, due or not (delivery is in order). Its CID and metadata come from
        the queue row: a lost or torn sidecar never holds a read back."""
        row = self.store.first_ready()
        return None if row is None else self._entry(row)

    def next_due(self, now_mono: float) -> Entry | None:
        """The oldest ready read if its retry time has come; None while it backs off (newer reads wait
        behind it: order is kept) or when none is ready."""
        if self._unsettled:
            self._settle_unsettled()
        with self.store.exclusive():
            expiring = self.store.open and now_mono >= self._next_expire
            if expiring:
                self._expire()
            entry = self.head()
        if expiring:  # outside the lock: the reserve's fallocate and a statvfs never hold up a put
            self.update_gauges()
        self.store.checkpoint()
        return entry if entry is not None and entry.retry_at <= now_mono else None

    def entries(self) -> list[Entry]:
        """Every waiting read, oldest first, those still waiting for their clip included (`spool list`)."""
        return [self._entry(r) for r in self.store.rows() if r.state in (PENDING, READY)]

    def _entry(self, row: Row) -> Entry:
        return Entry(row.event_id, row.cid, row.metadata, self.files.video(row.event_id) if row.has_video else None,
                     row.size_bytes, row.sha256, row.created_at, row.attempts, row.last_error,
                     self._retry_at.get(row.event_id, 0.0), row.state == PENDING, row.boot_id, row.created_mono,
                     row.clock_synced)

    def oldest(self) -> Entry | None:
        """The read waiting longest (first in the queue, whatever the clock said when it was queued)."""
        row = self.store.oldest()
        return None if row is None else self._entry(row)

    def queued_age_s(self, entry: Entry, synced_now: bool | None) -> float | None:
        """How long `entry` has waited, by `age_s`'s rule; None when nobody can tell."""
        return self.age_s(entry.created_at, entry.boot_id, entry.created_mono, entry.clock_synced, synced_now)

    def mark_delivered(self, event_id: str) -> None:
        """The server has it: the row is marked delivered, then its files go, then the row. A crash in
        between leaves a row that says delivered, which recovery finishes deleting (never sent again,
        never set aside as unknown)."""
        if not self.store.open:
            log.warning("spool closed: delivery of clip=%s not recorded (it will be sent again)", event_id)
            return
        self._delete(event_id)
        self.update_gauges()

    def _delete(self, event_id: str, gone: str = DELIVERED) -> None:
        """A read done with (`gone`: delivered or expired): its row says so, then its files go and are synced
        gone, then its row. A crash anywhere leaves what recovery finishes, never a sidecar without its row
        (which would queue the read again)."""
        self._retry_at.pop(event_id, None)
        try:
            marked = self.store.set_state(event_id, gone)
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
            # a full disk: even an update needs room in the log. The files go first to make that room; a
            # crash right now leaves a row without its video, which goes out again CID-only (a duplicate the
            # server answers by its idempotency key)
            marked = True
        if marked:
            self.files.delete(event_id)
            self.files.sync()
            self.store.delete(event_id)

    def mark_failed(self, event_id: str, error: str, retry_at_mono: float | None = None) -> None:
        """Count a failed attempt; the read is not due again before `retry_at_mono` (monotonic)."""
        if not self.store.open:
            return
        # the queue is read by `spool status` and tickets: never a login an error quoted from a URL
        if self.store.failed(event_id, redact(error)[:500]) and retry_at_mono is not None:
            self._retry_at[event_id] = retry_at_mono

    def quarantine(self, event_id: str, reason: str, hint: str = "") -> None:
        """Take a read out of the queue into quarantine/ (`spool requeue` brings it back). `hint`, what to
        fix before requeueing, ends the one log line."""
        with self.store.exclusive():
            row = self.store.get(event_id)
            if row is not None:
                # quarantine/ gets the row's copy, whatever became of the sidecar: `spool requeue` reads it
                with contextlib.suppress(OSError):
                    self.files.rewrite_sidecar(event_id, row.record())
                self.store.delete(event_id)
            self._retry_at.pop(event_id, None)
            self._quarantine.set_aside(event_id, reason, cid=row.cid if row else None, hint=hint)
        self.update_gauges()

    def drop_video(self, event_id: str, reason: str) -> Entry | None:
        """The read's video is missing or damaged: set what is left of it aside in quarantine/ (as
        `<id>.video-lost.mp4`, for whoever wants to look) and keep the read queued CID-only, with
        `metadata.clip.error` saying why. The CID is what the factory needs; it is never dropped
        for want of its video. None if the read is no longer queued."""
        row = self._without_video(event_id, f"video lost on the device: {reason}", set_aside=True)
        self.update_gauges()
        return None if row is None else self._entry(row)

    def _without_video_recovered(self, event_id: str, reason: str, damaged: bool) -> None:
        self._without_video(event_id, f"video lost on the device: {reason}", set_aside=damaged)

    def _without_video(self, event_id: str, error: str, set_aside: bool = False) -> Row | None:
        """Row first (CID-only, `clip.error`), then the video (deleted, or set aside), then the sidecar: a
        crash between leaves a row that says no video, and recovery deletes a video its row does not name
        and writes the sidecar again."""
        with self.store.exclusive():
            row = self.store.get(event_id)
            if row is None:
                return None
            metadata = _clip_error(row.metadata, error)
            try:
                self._row_write(lambda: self.store.without_video(event_id, metadata, row.state), row.cid, event_id)
            except sqlite3.OperationalError as exc:
                if set_aside or not is_disk_full(exc):
                    raise
                # a full disk: even an update needs room in the log. The video goes first to make it; a
                # crash right then leaves a row whose video is missing, which goes out CID-only all the same
                self.files.delete_video(event_id)
                self.store.without_video(event_id, metadata, row.state)
            row = self.store.get(event_id)
        if set_aside:
            self._quarantine.keep_damaged_video(event_id, error)
        else:
            self.files.delete_video(event_id)
        if row is not None and row.state != PENDING:
            try:
                self.files.rewrite_sidecar(event_id, row.record())
            except OSError as exc:  # e.g. disk full: the old sidecar stays; the row is what goes out
                log.error("spool: cannot rewrite metadata of clip=%s error=%s", event_id, exc.strerror or exc)
        return row

    def requeue(self) -> int:
        """Move quarantined clips that still have their metadata back to the end of the queue."""
        n = 0
        with self.store.exclusive():
            if not self.store.open:
                return 0
            # the moves are on disk before any row names them: a crash then leaves orphans in clips/, which the
            # next start queues, never a row whose files are back in quarantine/ (sent again from there)
            moved = list(self._quarantine.take_back())
            with contextlib.suppress(OSError):
                self.files.sync()
                fsync_path(self.quarantine_dir)
            for side in moved:
                n += reenqueue(self.store, self.files, self._quarantine, self.metrics,
                               self._without_video_recovered, side)
        self.update_gauges()
        return n

    # --- drops ----------------------------------------------------------------------------------

    def _count_drop(self, reason: str, cid: str, event_id: str, detail: str = "") -> None:
        """A read given up (it never reaches the server): counted by reason in the queue file (`spool status`
        shows the counts across restarts), by this object (`status().dropped_since_open`), in the metrics and
        in the log, with its CID and clip id."""
        self.metrics.spool_dropped.labels(reason=reason).inc()
        with self._drops_lock:
            self._dropped_since_open[reason] += 1
        if not self.reader:
            with contextlib.suppress(sqlite3.Error):
                self.store.count_drop(READS, reason, cid, event_id, time.time())
        log.error("spool: dropped cid=%s clip=%s reason=%s%s", cid, event_id, reason,
                  f" error={detail}" if detail else "")

    def _count_video_drop(self, reason: str, cid: str, event_id: str, detail: str) -> None:
        """A video let go while its read stays queued (it goes out CID-only, `clip.error` saying why)."""
        self.metrics.spool_videos_dropped.labels(reason=reason).inc()
        with contextlib.suppress(sqlite3.Error):
            self.store.count_drop(VIDEOS, reason, cid, event_id, time.time())
        log.error("spool: video dropped, read kept cid=%s clip=%s reason=%s error=%s", cid, event_id, reason, detail)

    # --- introspection --------------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        """What the queue holds and the disk has, read without changing anything."""
        free = int(min(self.room.free_bytes(), 2**62))
        n, pending, b = self.store.totals()
        return SpoolStatus(n, b, self.store.oldest_created_at(), self.store.first_error(),
                           quarantined_count(self.quarantine_dir), self.store.drops(READS), free,
                           self.disk_full or self.room.looks_full(free),
                           newest_quarantine_reason(self.quarantine_dir),
                           pending, self.store.drops(VIDEOS), self.store.memory, self._dropped_since_open_now())

    def _dropped_since_open_now(self) -> dict[str, int]:
        with self._drops_lock:
            return dict(self._dropped_since_open)

    def serve_requests(self) -> None:
        """The owner answers what commands asked (`spool requeue` beside the running agent); cheap
        enough to call from the uploader's loop."""
        if not self.owner or not self._requests.requeue_asked():
            return
        n = self.requeue()
        log.info("spool: requeued %d clip(s) at the request of `edge-agent spool requeue`", n)
        self._requests.answer_requeue(n)

    def update_gauges(self) -> None:
        """The spool's gauges, from the queue and the disk as they are now (the owner, after each change and
        from the uploader's loop)."""
        self.room.keep_reserve()
        self._count_gauges()
        self.metrics.spool_disk_free_bytes.set(int(min(self.room.free_bytes(), 2**62)))

    def _count_gauges(self) -> None:
        n, pending, b = self.store.totals()
        self.metrics.spool_clips.set(n)
        self.metrics.spool_reads_pending.set(pending)
        self.metrics.spool_bytes.set(b)

    def update_config(self, cfg: SpoolConfig) -> None:
        """The bounds, from now on (the next put, the next expiry); the folder itself is restart-only."""
        with self.store.exclusive():
            self.cfg = cfg.model_copy(update={"dir": self.cfg.dir})
            self._next_expire = 0.0

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """Live part (any thread): the spool has no thread of its own; its bounds change under its lock."""
        self.update_config(new.spool)

    @property
    def config(self) -> Config:
        """The bounds in use, as a config (the spool's section; the rest is not the spool's)."""
        return Config().model_copy(update={"spool": self.cfg})

    def close(self) -> None:
        """Close the queue and give up ownership. Later calls are harmless no-ops (an uploader thread
        finishing a request after shutdown must not crash: its clip is simply sent again next time).
        Reads still waiting for their clip now never get one (the pipeline stops first): they go out
        CID-only, saying so."""
        clean = False
        if self.owner and self.store.open:
            clean = not self.store.memory
            for row in self.store.rows(PENDING):
                try:
                    settle_pending(row, self.store, self.files, self.metrics, STOPPED_AT_SHUTDOWN)
                except (sqlite3.Error, OSError):
                    clean = False  # the next start looks at everything
        self.store.close()
        if clean:  # every read is in its row, ready or delivered, and its files are whole: said for the next start
            with contextlib.suppress(OSError):
                (self.root / CLEAN_STOP).touch()
                fsync_path(self.root)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clip_error(metadata: dict[str, Any], error: str) -> dict[str, Any]:
    """The metadata of a read going out without its video: the clip's times kept, `clip.error` why."""
    clip = metadata.get("clip") or {}
    kept = {k: clip[k] for k in ("start_at", "end_at", "duration_s") if k in clip}
    return {**metadata, "clip": {**kept, "error": error}}
