"""What sits in a spool's quarantine/, read from the files alone, and how a command asks the owner to
bring it back.

Both are safe beside the running agent: listing takes no lock and changes nothing, and
`spool requeue` never moves the owner's files itself but leaves a request the owner answers
(`Spool.serve_requests`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.delivery.spool_files import read_sidecar, safe_id

# Files by which `spool requeue` asks the running agent to requeue, and its answer.
REQUEUE_REQUEST = "requeue.request"
REQUEUE_ANSWER = "requeue.answer"


@dataclass
class Quarantined:
    """A clip set aside in quarantine/, for `spool list`: what `spool requeue` would bring back."""

    event_id: str
    cid: str
    size_bytes: int
    created_at: float | None
    quarantined_at: float
    reason: str


def quarantined_count(quarantine_dir: Path) -> int:
    """Quarantined clips (what `spool requeue` can bring back), not the set-aside videos of
    events that went out CID-only."""
    return sum(1 for p in quarantine_dir.glob("*.reason") if not p.name.endswith(".video-lost.reason"))


def newest_quarantine_reason(quarantine_dir: Path) -> str | None:
    items = quarantine_list(quarantine_dir)
    return items[-1].reason if items else None


def quarantine_list(quarantine_dir: Path) -> list[Quarantined]:
    """Quarantined clips, oldest quarantine first, with the reason each was set aside (read-only:
    safe beside the running agent)."""
    out = []
    for note in quarantine_dir.glob("*.reason"):
        event_id = note.name[:-len(".reason")]
        if event_id.endswith(".video-lost") or not safe_id(event_id):
            continue
        try:
            reason = note.read_text(encoding="utf-8").strip()
            at = note.stat().st_mtime
        except OSError:
            continue  # requeued meanwhile
        cid, size, created = "?", 0, None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = read_sidecar(quarantine_dir / f"{event_id}.json")
            cid, size, created = data["cid"], int(data.get("size_bytes") or 0), float(data["created_at"])
        if size == 0:
            with contextlib.suppress(OSError):
                size = (quarantine_dir / f"{event_id}.mp4").stat().st_size
        out.append(Quarantined(event_id, cid, size, created, at, reason or "-"))
    return sorted(out, key=lambda q: (q.quarantined_at, q.event_id))


def request_requeue(root: Path, timeout_s: float) -> int | None:
    """Ask the owner (the running agent) to requeue quarantined clips; the count it requeued, or None
    if it did not answer in time. The commands never move the owner's files themselves."""
    req = root / REQUEUE_REQUEST
    answer = root / REQUEUE_ANSWER
    answer.unlink(missing_ok=True)
    req.write_text(f"{os.getpid()}\n", encoding="ascii")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not req.exists() and answer.exists():
            with contextlib.suppress(OSError, ValueError):
                n = int(answer.read_text(encoding="ascii").strip())
                answer.unlink(missing_ok=True)
                return n
        time.sleep(0.1)
    req.unlink(missing_ok=True)
    return None
