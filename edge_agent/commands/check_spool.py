"""The spool line of `edge-agent check`: can the user this runs as use the spool the way the daemon does?

A writable folder is not enough: the daemon also opens `spool.lock` and `queue.sqlite3` (with its
`-wal` and `-shm`) for writing, writes in `tmp/`, `clips/` and `quarantine/`, and reads every clip
there to send it. One file the service's user cannot use (a root-owned `queue.sqlite3` left by an
operator's `sudo` of an older version) makes the service exit 73 in a restart loop, so each of
those is tried here, and the queue database with a real (rolled back) write transaction.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from edge_agent import const
from edge_agent.commands.check_result import FAIL, PASS, Result
from edge_agent.commands.ownership import as_owner_command, chown_fix, current_user, folder_owner
from edge_agent.config import Config

QUEUE = "queue.sqlite3"
# Opened read-write by the daemon (spool_lock.take, spool_recovery.connect): a file here it cannot write stops it.
WRITTEN_FILES = ("spool.lock", QUEUE, f"{QUEUE}-wal", f"{QUEUE}-shm")
# A daemon holding the queue's write lock for longer than this is busy, not broken.
QUEUE_BUSY_S = 5.0
SHOWN = 3  # files named in the FAIL line; the rest are counted


def check_spool(cfg: Config) -> Result:
    """Create the folder, write and fsync a probe file, try every file and folder the daemon uses,
    write to the queue database, and look at the free space."""
    d = Path(cfg.spool.dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        _probe(d)
        usage = shutil.disk_usage(d)
    except OSError as exc:
        return Result("spool", FAIL, f"{d}: {exc.strerror or exc}", _os_error_hint(d, exc))
    blocked = unusable(d)
    if blocked:
        names = ", ".join(f"{p.relative_to(d)} ({_owner_name(p)}, cannot {how})" for p, how in blocked[:SHOWN])
        more = f" and {len(blocked) - SHOWN} more" if len(blocked) > SHOWN else ""
        return Result("spool", FAIL, f"{d}: {current_user()} cannot use {names}{more}",
                      f"the service would exit 73 (Permission denied): {_ownership_fix(d)}",
                      {"dir": str(d), "blocked": [str(p) for p, _ in blocked]})
    queue_error = try_queue(d)
    if queue_error:
        return Result("spool", FAIL, f"{d / QUEUE}: {queue_error}",
                      f"the daemon could not store a clip: {_ownership_fix(d)}", {"dir": str(d)})
    free = usage.free
    room = max(0, min(cfg.spool.max_bytes, free - cfg.spool.min_free_bytes))
    data = {"dir": str(d), "free_bytes": free, "room_bytes": room, "user": current_user()}
    if free < cfg.spool.min_free_bytes:
        return Result("spool", FAIL, f"{d}: only {free >> 20} MiB free, spool.min_free_bytes keeps "
                      f"{cfg.spool.min_free_bytes >> 20} MiB for the system",
                      "free disk space (old logs, images) or put spool.dir on a bigger disk", data)
    queue = "queue writable" if (d / QUEUE).exists() else "no queue yet"
    return Result("spool", PASS, f"{d}: writable by {current_user()} (fsync ok, {queue}), {free >> 20} MiB free, "
                  f"room for {room >> 20} MiB of clips", data=data)


def _probe(d: Path) -> None:
    fd, name = tempfile.mkstemp(dir=d, prefix=".check-", suffix=".part")
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def unusable(root: Path) -> list[tuple[Path, str]]:
    """Every file and folder under the spool the daemon could not use as this user: folders it must
    write in, the lock and the queue it must write, clips it must read."""
    out: list[tuple[Path, str]] = []
    for top, dirs, files in os.walk(root):
        here = Path(top)
        if not os.access(here, os.R_OK | os.W_OK | os.X_OK):
            out.append((here, "write in it"))
            dirs[:] = []  # what is below cannot be reached anyway
            continue
        for name in sorted(files):
            p = here / name
            if here == root and name in WRITTEN_FILES:
                if not os.access(p, os.R_OK | os.W_OK):
                    out.append((p, "write it"))
            elif not os.access(p, os.R_OK):
                out.append((p, "read it"))
    return out


def try_queue(root: Path) -> str:
    """Open the queue database as the daemon does and make a write it then rolls back; "" when that
    works or there is no queue yet (the daemon makes it in the writable folder)."""
    path = root / QUEUE
    if not path.exists():
        return ""
    try:
        db = sqlite3.connect(str(path), isolation_level=None, timeout=QUEUE_BUSY_S)
    except sqlite3.Error as exc:
        return str(exc)  # the daemon's open would fail the same way
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE edge_agent_check_probe (x)")  # refused on a file opened read-only
        db.execute("ROLLBACK")
        return ""
    except sqlite3.OperationalError as exc:
        if any(word in str(exc) for word in ("readonly", "unable to open", "permission")):
            return str(exc)
        return ""  # locked: the running daemon holds the write lock, so it can write
    except sqlite3.Error:
        return ""  # a damaged queue: the daemon moves it aside and rebuilds it from clips/ (spool_recovery)
    finally:
        db.close()


def _owner_name(p: Path) -> str:
    try:
        uid = p.stat().st_uid
    except OSError:
        return "?"
    owner = folder_owner(p)
    return f"owned by {owner.name if owner is not None and owner.uid == uid else 'root' if uid == 0 else uid}"


def _ownership_fix(d: Path) -> str:
    """As the spool's owner (the service's user): give the files back to it. As anyone else: check as it."""
    owner = folder_owner(d)
    if owner is not None and owner.uid != os.geteuid():
        return f"check as the spool's owner {owner.name}: {as_owner_command(owner)}"
    return f"give the spool back to its user: {chown_fix(d, current_user())}"


def _os_error_hint(d: Path, exc: OSError) -> str:
    """Why the folder cannot be made or written, naming the folder that is missing or refuses, and what makes it."""
    why = exc.strerror or str(exc)
    if "read-only" in why.lower() or exc.errno == errno.EROFS:
        return f"{d} is on a read-only file system: point spool.dir at a writable disk"
    missing = _first_missing(d)
    state = Path(const.SERVICE_STATE_DIR)
    if missing is not None and (missing == state or state in missing.parents):
        top = missing if missing == state else state
        if not top.exists():
            return (f"{top} does not exist: the package's tmpfiles.d entry makes it for {const.SERVICE_USER} "
                    "(sudo systemd-tmpfiles --create edge-agent.conf), or systemd's StateDirectory= when the "
                    "service first starts (sudo systemctl start edge-agent)")
    if isinstance(exc, PermissionError):
        owner = folder_owner(d)
        if owner is not None and owner.uid != os.geteuid():
            return f"{owner.decided_by} belongs to {owner.name}: check as that user: {as_owner_command(owner)}"
        if missing is None:  # the folder is there, made by another user
            return f"the service would exit 73 (Permission denied): {_ownership_fix(d)}"
        return (f"{current_user()} cannot write in {missing.parent}: make the folder for it "
                f"(sudo install -d -o {current_user()} {missing}), or point spool.dir elsewhere; under "
                "systemd a spool.dir outside /var/lib/edge-agent needs ReadWritePaths= in a unit drop-in")
    return f"{d} cannot be created or written: point spool.dir at a folder on a writable local disk"


def _first_missing(d: Path) -> Path | None:
    """The topmost folder of `d` that does not exist (the one to create), or None when `d` exists."""
    missing = None
    for p in (d, *d.parents):
        try:
            p.stat()
            break
        except FileNotFoundError:
            missing = p
        except OSError:  # cannot even look: a parent refuses
            break
    return missing
