"""The spool's durable file helpers: fsync, hashing, the clip's JSON sidecar, and reading a full disk.

The sidecar (`clips/<id>.json`) holds everything the queue row does, so a lost or damaged queue
file is rebuilt from sidecars alone; these helpers are what the spool, its recovery and the
commands share to read and write them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any


def disk_full_note(root: Path, queued_bytes: int) -> str:
    """The one wording of a full spool disk, for logs and commands."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = 0
    return (f"spool disk full ({free >> 20} MiB free, {queued_bytes >> 20} MiB queued): free space on "
            f"{root}'s disk, or lower spool.max_bytes")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from the OS or SQLITE_FULL from SQLite: a full disk, never corruption."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "disk is full" in str(exc)
    return False


def is_corrupt(exc: sqlite3.Error) -> bool:
    """Only a damaged file is set aside: SQLITE_CORRUPT, SQLITE_NOTADB or a failed quick_check. A full
    disk, an I/O error or a permission problem leaves the healthy queue where it is."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (11, 26):  # SQLITE_CORRUPT, SQLITE_NOTADB
        return True
    text = str(exc)
    return text.startswith("quick_check") or "malformed" in text or "not a database" in text


def bytes_in(folder: Path) -> int:
    """The size of a folder's files, for the disk-full note; what cannot be read counts as nothing."""
    total = 0
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
    return total


@functools.lru_cache(maxsize=1)
def boot_id() -> str | None:
    """Linux's id of this boot: monotonic times compare only within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_note(path: Path, text: str) -> None:
    """A small text file (a quarantine reason) with its bytes on disk; the caller fsyncs its folder."""
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_sidecar(side: Path) -> dict[str, Any]:
    """The sidecar's content, checked for what re-enqueueing needs; ValueError/OSError otherwise."""
    data = json.loads(side.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict) or not isinstance(data.get("cid"), str):
        raise ValueError("sidecar lacks cid or metadata")
    float(data["created_at"])
    return data


# A sidecar starts with its CID (the spool writes "cid" first), so a sidecar torn after its first
# bytes (a power cut on storage that lies about fsync) still names the clip's CID.
_CID_AT_START = re.compile(r'^\s*\{\s*"cid"\s*:\s*("(?:[^"\\]|\\.)*")')


def salvage_sidecar(side: Path, event_id: str, video: Path) -> dict[str, Any] | None:
    """A torn sidecar's CID, as the least sidecar that sends the clip (CID and video, metadata naming
    the clip); None when not even the CID can be read. The video's hash is taken as it is now: the
    server can check the transfer, though nobody can tell whether the file was whole before."""
    try:
        m = _CID_AT_START.match(side.read_text(encoding="utf-8", errors="replace"))
        cid = json.loads(m.group(1)) if m else None
        created = side.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(cid, str) or not cid:
        return None
    try:
        clip: dict[str, Any] = {"sha256": sha256_file(video), "size_bytes": video.stat().st_size}
    except OSError:
        clip = {}
    meta = {"event_id": event_id, "cid": cid, "clip": clip}
    return {"cid": cid, "metadata": meta, "created_at": created, "has_video": bool(clip),
            "sha256": clip.get("sha256"), "size_bytes": clip.get("size_bytes", 0)}


def write_sidecar(part: Path, side: Path, data: dict[str, Any]) -> None:
    """Write and fsync the sidecar under its part name, then rename it into place. The caller fsyncs
    the directory (a put first renames the clip too) and removes the part if this raises."""
    with part.open("w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, side)


def sidecar_created_at(side: Path) -> float:
    """A sort key keeping clips in the order they were made; 0 for a sidecar that cannot be read."""
    try:
        return float(json.loads(side.read_text(encoding="utf-8"))["created_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def safe_id(event_id: str) -> bool:
    """Event ids are our own UUIDs; anything else never becomes a path."""
    return 0 < len(event_id) <= 64 and all(c.isascii() and (c.isalnum() or c == "-") for c in event_id)
