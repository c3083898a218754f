"""A spool's quarantine/: clips set aside (the owner's `Quarantine`), and what sits there, read from the
files alone (`quarantine_list` and its kin: safe beside the running agent, they take no lock and
change nothing).

A clip is set aside when the server refused it for good, or when recovery found files it cannot
queue; each with a `<id>.reason` note. A read whose video alone was damaged stays queued CID-only and
its video is kept here as `<id>.video-lost.mp4`, for whoever wants to look. `spool requeue` brings
set-aside clips back (`Quarantine.take_back`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent.delivery.clip_files import ClipFiles
from edge_agent.delivery.spool_files import (
    fsync_path,
    read_sidecar,
    safe_id,
    salvage_sidecar,
    sidecar_created_at,
    write_note,
    write_sidecar,
)
from edge_agent.metrics import Metrics

log = logging.getLogger("edge_agent.delivery.spool")


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


class Quarantine:
    """The owner's side of quarantine/: moving clips in and back out."""

    def __init__(self, folder: Path, files: ClipFiles, metrics: Metrics):
        self.dir = folder
        self._files = files
        self._metrics = metrics

    def set_aside(self, event_id: str, reason: str, cid: str | None = None, hint: str = "") -> bool:
        """Move a clip's files from clips/ to here with a .reason note, logged with `hint` (what to fix before
        requeueing); False when there was nothing to move."""
        moved = False
        for src in (self._files.video(event_id), self._files.sidecar(event_id)):
            if not src.exists():
                continue
            try:
                os.replace(src, self.dir / src.name)
                moved = True
            except OSError as exc:
                log.error("spool: cannot quarantine %s error=%s", src.name, exc.strerror or exc)
        if moved:
            with contextlib.suppress(OSError):  # a power cut must not leave the clip set aside without its reason
                write_note(self.dir / f"{event_id}.reason", reason + "\n")
                fsync_path(self.dir)
                self._files.sync()
            self._metrics.spool_quarantined.inc()
            log.error("spool: quarantined cid=%s clip=%s reason=%s%s", cid or "?", event_id, reason,
                      f" -> {hint}" if hint else "")
        return moved

    def keep_damaged_video(self, event_id: str, reason: str) -> None:
        """A queued read's video that cannot be sent (missing bytes, a wrong hash): kept here for people to
        look at while the read goes out CID-only; deleted where it cannot be moved."""
        mp4 = self._files.video(event_id)
        if not mp4.exists():
            return
        try:
            os.replace(mp4, self.dir / f"{event_id}.video-lost.mp4")
            write_note(self.dir / f"{event_id}.video-lost.reason", reason + "\n")
            fsync_path(self.dir)
        except OSError:
            self._files.delete_video(event_id)

    def take_back(self) -> Iterator[Path]:
        """Move each set-aside clip that still names its CID back into clips/, oldest first; yields its
        sidecar there, for the caller to queue."""
        for side in sorted(self.dir.glob("*.json"), key=sidecar_created_at):
            event_id = side.stem
            if not safe_id(event_id):
                continue
            try:
                read_sidecar(side)
            except (OSError, ValueError, KeyError, TypeError):
                # torn (set aside so by a build whose queue row did not keep the metadata): the CID
                # it still starts with sends the clip with its video
                salvaged = salvage_sidecar(side, event_id, self.dir / f"{event_id}.mp4")
                if salvaged is None:
                    continue
                with contextlib.suppress(OSError):
                    write_sidecar(self._files.tmp / f"{event_id}.json.part", side, salvaged)
            try:
                mp4 = self.dir / f"{event_id}.mp4"
                if mp4.exists():
                    os.replace(mp4, self._files.video(event_id))
                os.replace(side, self._files.sidecar(event_id))
                (self.dir / f"{event_id}.reason").unlink(missing_ok=True)
            except OSError as exc:
                log.error("spool requeue: cannot move clip=%s error=%s", event_id, exc.strerror or exc)
                continue
            yield self._files.sidecar(event_id)
