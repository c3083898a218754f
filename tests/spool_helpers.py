"""Filling a spool with clips for delivery tests (random bytes stand in for MP4: delivery never parses them)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import SpoolConfig, UploadConfig
from edge_agent.delivery.spool import CLEAN_STOP, Spool


def spool_config(path: Path, **kw: Any) -> SpoolConfig:
    return SpoolConfig(**{"dir": str(path), "min_free_bytes": 0, **kw})


def fast_upload(url: str, **kw: Any) -> UploadConfig:
    """Short backoff and timeouts so retry tests run in seconds."""
    base = {"url": url, "backoff_base_s": 0.05, "backoff_cap_s": 0.5, "read_timeout_s": 1.0,
            "connect_timeout_s": 1.0, "min_rate_bytes_per_s": 10_000_000}
    return UploadConfig(**{**base, **kw})


def add_clip(spool: Spool, size: int = 50_000, cid: str | None = None,
             event_id: str | None = None) -> tuple[str, str, str]:
    """Queue one clip (for the read `event_id`, if one was committed); returns (event_id, cid, sha256)."""
    event_id = event_id or str(uuid.uuid4())
    cid = cid or f"CID-{event_id[:8].upper()}"
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    part = spool.part_path(event_id)
    part.write_bytes(data)
    meta = {"schema_version": 1, "event_id": event_id, "device_id": "test", "cid": cid,
            "detected_at": "2026-11-24T00:00:00.000Z", "clip": {"size_bytes": size, "sha256": sha},
            "detection": {"decoder": "zxing", "polygon": [], "frame_width": 1, "frame_height": 1, "hits": 1},
            "agent": {"version": "test"}}
    assert spool.put(event_id, cid, meta, part)
    return event_id, cid, sha


@contextlib.contextmanager
def small_filesystem(where: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of `size` (e.g. "4m") mounted at `where` (read-only if asked), when this machine lets a
    test mount one (root, as CI is); the test is skipped with the reason otherwise."""
    where.mkdir()
    options = f"ro,size={size}" if read_only else f"size={size}"
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                         check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.decode().strip() or res.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write a ballast file until the filesystem says ENOSPC."""
    with path.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def crash(spool: Spool) -> None:
    """The owner dies without a clean stop (killed, a power cut): the next start checks every read's files.
    (A clean close leaves a mark that lets the next start skip them: the uploader checks each video as it
    sends it.)"""
    spool.close()
    (spool.root / CLEAN_STOP).unlink(missing_ok=True)
