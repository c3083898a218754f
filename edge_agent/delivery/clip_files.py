"""A spool's clip files: `tmp/` where clips are written, `clips/` where queued ones wait (architecture section 7).

A clip is written as `tmp/<id>.mp4.part` and fsynced, its sidecar (`<id>.json`, a copy of the queue
row) written and fsynced as `tmp/<id>.json.part`; the sidecar is renamed into clips/ (the commit point:
from here on recovery finishes the put), then the clip, then clips/ itself is fsynced so both renames
survive a power cut. File names come from our own event ids only (`safe_id`), never from a CID.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from edge_agent.delivery.spool_files import fsync_path, read_sidecar, safe_id, write_sidecar

# the spool's lines keep one logger name, wherever in the package the code lives
log = logging.getLogger("edge_agent.delivery.spool")


class ClipFiles:
    """The clip and sidecar files of one spool. Each method touches one read's files only, so the clip
    stage and the uploader call them without the queue's lock."""

    def __init__(self, root: Path):
        self.root = root
        self.tmp = root / "tmp"
        self.clips = root / "clips"

    def make_folders(self) -> None:
        for d in (self.root, self.tmp, self.clips):
            d.mkdir(parents=True, exist_ok=True)

    def part(self, event_id: str) -> Path:
        """Where the clip maker writes a clip before the spool takes it."""
        if not safe_id(event_id):
            raise ValueError("event id must be alphanumeric with dashes")
        return self.tmp / f"{event_id}.mp4.part"

    def video(self, event_id: str) -> Path:
        return self.clips / f"{event_id}.mp4"

    def sidecar(self, event_id: str) -> Path:
        return self.clips / f"{event_id}.json"

    def commit(self, event_id: str, record: dict[str, Any], video_part: Path | None) -> None:
        """Make the clip and its sidecar durable in clips/ (OSError, and nothing moved, if the disk refuses:
        `undo` puts back what a failure left half done)."""
        if video_part is not None:
            fsync_path(video_part)
        write_sidecar(self.tmp / f"{event_id}.json.part", self.sidecar(event_id), record)
        if video_part is not None:
            os.replace(video_part, self.video(event_id))
        fsync_path(self.clips)

    def undo(self, event_id: str, video_part: Path | None) -> None:
        """After a failed commit: the clip back under its part name, no sidecar left."""
        mp4 = self.video(event_id)
        with contextlib.suppress(OSError):
            if video_part is not None and mp4.exists() and not video_part.exists():
                os.replace(mp4, video_part)
        for p in (self.tmp / f"{event_id}.json.part", self.sidecar(event_id)):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)

    def rewrite_sidecar(self, event_id: str, record: dict[str, Any]) -> None:
        """The sidecar again from the row (lost, torn, or the row changed): durable when this returns."""
        part = self.tmp / f"{event_id}.json.part"
        try:
            write_sidecar(part, self.sidecar(event_id), record)
        except OSError:
            part.unlink(missing_ok=True)
            raise
        fsync_path(self.clips)

    def sidecar_agrees(self, event_id: str, record: dict[str, Any]) -> bool | None:
        """Whether the sidecar holds what the row does; None when it is missing or cannot be read."""
        try:
            side = read_sidecar(self.sidecar(event_id))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return all(side.get(k) == record.get(k) for k in ("cid", "has_video", "sha256", "metadata"))

    def delete(self, event_id: str) -> None:
        """Both files, the sidecar first; what cannot be deleted is logged (recovery tries again)."""
        for path in (self.sidecar(event_id), self.video(event_id)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("spool: cannot delete %s error=%s", path.name, exc.strerror or exc)

    def delete_video(self, event_id: str) -> bool:
        """The clip's video alone; False when there was none."""
        try:
            self.video(event_id).unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("spool: cannot delete %s.mp4 error=%s", event_id, exc.strerror or exc)
            return False

    def size(self, event_id: str) -> int | None:
        try:
            return self.video(event_id).stat().st_size
        except OSError:
            return None

    def parts(self) -> list[Path]:
        """Unfinished files: what a put had not handed over yet."""
        found = list(self.clips.glob("*.part"))
        with contextlib.suppress(OSError):
            found += list(self.tmp.iterdir())
        return found

    def sidecars(self) -> list[Path]:
        return list(self.clips.glob("*.json"))

    def videos(self) -> list[Path]:
        return list(self.clips.glob("*.mp4"))

    def sync(self) -> None:
        fsync_path(self.clips)
