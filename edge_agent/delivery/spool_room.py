"""Room on the spool's disk: which bound a new video breaks, and the reserve kept for reads' rows.

The bounds (spool.max_bytes, spool.min_free_bytes, a full disk) apply to videos only: a read without
one takes a row of a few kB, and reads are what the factory cannot lose. When the disk fills so far
that SQLite cannot grow its log, the spool gives up a reserve file kept for that moment (`give_reserve`);
until it is made again (`keep_reserve`, once the disk has room for it and a margin), no video takes
that room. The spool decides what to drop; this module only says what fits.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import SpoolConfig

log = logging.getLogger(__name__)

# A file of this size kept in the spool and given up when the queue cannot write a row on a full disk: a
# read costs ~30 kB of log (its row and index pages, at detection and when its clip comes) until a
# checkpoint can run again, so this keeps ~140 reads until delivery frees room.
RESERVE_NAME = "reserve"
RESERVE_BYTES = 4 << 20
# ... and made again once this much more is free: until then no video takes the room.
RESERVE_MARGIN = 4 << 20
# Less free space than this on the spool's disk reads as full: SQLite and a clip's sidecar need a little.
FULL_BELOW_BYTES = 1 << 20


@dataclass(frozen=True)
class Bound:
    """A bound a new video would break: `reason` names it in metrics (max_bytes, min_free_bytes,
    disk_full), `words` for a person, `low_disk` when freeing queued videos changes the disk's free space
    (to be read again), not only the queue's total; `hopeless` when even every queued video given up
    would not make it fit (then none is)."""

    reason: str
    words: str
    low_disk: bool
    hopeless: bool


def broken_bound(cfg: SpoolConfig, used: int, size: int, free: float, reserve_given: bool) -> Bound | None:
    """The bound a video of `size` bytes would break joining `used` bytes of queued videos with `free`
    bytes left on the disk, or None when it fits. The new clip's file is already on this disk (in tmp/),
    so free space is compared as it is, not less the clip; a queued video given up frees about its size."""
    floor = cfg.min_free_bytes
    need_free = max(floor, RESERVE_BYTES + RESERVE_MARGIN if reserve_given else 0)
    low_disk = free < need_free
    hopeless = size > cfg.max_bytes or (low_disk and free + used < need_free)
    if used + size > cfg.max_bytes:
        return Bound("max_bytes", f"spool.max_bytes={cfg.max_bytes} reached", low_disk, hopeless)
    if free < floor:
        return Bound("min_free_bytes", f"less than spool.min_free_bytes={cfg.min_free_bytes} free on its disk",
                     True, hopeless)
    if low_disk:
        return Bound("disk_full", "its disk is full: room is kept for reads until it is free again", True, hopeless)
    return None


class Room:
    """The spool folder's disk: its free space and the reserve file (owner only; a reader never writes)."""

    def __init__(self, root: Path, tmp: Path, *, reader: bool = False) -> None:
        self._reserve = root / RESERVE_NAME
        self._part = tmp / f"{RESERVE_NAME}.part"
        self._root = root
        self._reader = reader
        self._given = False

    @property
    def reserve_given(self) -> bool:
        """The reserve went to reads' rows on a full disk and is not back yet: no video takes that room."""
        return self._given

    def free_bytes(self) -> float:
        """Free bytes on the spool's disk (infinite when it cannot be read: no bound is made up)."""
        try:
            return shutil.disk_usage(self._root).free
        except OSError:
            return float("inf")

    def looks_full(self, free: float) -> bool:
        """The disk has too little left for the queue to work as usual."""
        return self._given or free < FULL_BELOW_BYTES

    def give_reserve(self) -> bool:
        """Delete the reserve file so a read's row can be written; False when there is none to give."""
        if not self._reserve.exists():
            return False
        self._reserve.unlink(missing_ok=True)
        self._given = True
        return True

    def keep_reserve(self) -> None:
        """(Re)make the reserve file once the disk has room for it and more."""
        if self._reader or self._reserve.exists() or self.free_bytes() < RESERVE_BYTES + RESERVE_MARGIN:
            return
        try:
            with self._part.open("wb") as f:
                f.truncate(0)
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)  # real blocks, not a sparse file
            os.replace(self._part, self._reserve)
            self._given = False
        except OSError as exc:
            self._part.unlink(missing_ok=True)
            log.debug("spool: no reserve file yet: %s", exc)
