"""Where finished clips go: the durable spool (for upload) or a plain folder (replay without upload).

Both take the same three things from the clip worker: an event id, its CID, the metadata
and a written clip file (or None when no clip could be made: the CID still counts).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class ClipSink(Protocol):
    def part_path(self, event_id: str) -> Path:
        """Where the clip maker writes the clip before it is handed over."""
        ...

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> bool:
        """Take ownership of the clip; False if it was refused (spool full with on_full=reject_new)."""
        ...


class FolderSink:
    """`<event_id>.mp4` plus `<event_id>.json` (the metadata that would have been sent).

    File names come from our own event ids only: a CID never becomes a path.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def part_path(self, event_id: str) -> Path:
        return self.folder / f".{event_id}.mp4.part"

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> bool:
        if video_part is not None:
            os.replace(video_part, self.folder / f"{event_id}.mp4")
        tmp = self.folder / f".{event_id}.json.part"
        tmp.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.folder / f"{event_id}.json")
        return True

    def clip_path(self, event_id: str) -> Path:
        return self.folder / f"{event_id}.mp4"


class TeeSink:
    """Spool for delivery, and a copy in a folder (replay with both upload and --output-dir)."""

    def __init__(self, primary: ClipSink, copy_to: FolderSink):
        self.primary = primary
        self.copy_to = copy_to

    def part_path(self, event_id: str) -> Path:
        return self.primary.part_path(event_id)

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> bool:
        if video_part is not None:
            copy = self.copy_to.part_path(event_id)
            shutil.copyfile(video_part, copy)
            self.copy_to.put(event_id, cid, metadata, copy)
        else:
            self.copy_to.put(event_id, cid, metadata, None)
        return self.primary.put(event_id, cid, metadata, video_part)
