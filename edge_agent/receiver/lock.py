"""One receiver per data dir: an exclusive flock on `<data dir>/receiver.lock`, holding the owner's pid.

Two receivers on one data dir each keep their own idempotency-key locks in memory, so one key
posted to both at once is stored twice or fails on the database's UNIQUE constraint with an
orphan video. The second receiver therefore refuses to start. The kernel drops the lock when its
holder dies, so a crash never leaves a stale one. (Several receivers sharing one LDO store each
have their own data dir; the store's own keys keep them apart.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "receiver.lock"


class DataDirInUse(Exception):
    """Another receiver holds the data dir; the message names it and what to do."""


def hold(data_dir: Path) -> int:
    """Take the data dir for this process; returns the lock's fd (closing it lets go). Raises
    DataDirInUse when another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(data_dir / LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)
        raise DataDirInUse(f"another receiver (pid {pid}) already uses the data dir {data_dir}: stop it, or give "
                           "this one its own --data-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd
