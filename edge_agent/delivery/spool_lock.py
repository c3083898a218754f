"""One writer per spool: an exclusive flock on `spool.lock`, which also holds the owner's pid.

The daemon, `replay` and `spool flush` (when no daemon runs) take it; only its holder recovers,
puts and delivers. Readers (`spool status`, `list`) take none: they only ask who holds it, to say
so. The kernel releases the lock when the holder dies, so a crash never leaves a stale owner.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Linux: no lock, one process at a time is the user's to keep
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "spool.lock"


def _pid_in(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip() or 0) or None
    except (OSError, ValueError):
        return None


def owner_pid(root: Path) -> int | None:
    """The pid of the process holding the spool, or None when nobody does."""
    if fcntl is None:
        return None
    try:
        fd = os.open(str(root / LOCK_NAME), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _pid_in(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def take(root: Path) -> tuple[int | None, int | None]:
    """(the lock's fd, our pid) when we now hold the spool; (None, the holder's pid) when another
    process does. Closing the fd releases it."""
    if fcntl is None:
        return -1, os.getpid()
    fd = os.open(str(root / LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid = _pid_in(fd)
        os.close(fd)
        return None, pid
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd, os.getpid()
