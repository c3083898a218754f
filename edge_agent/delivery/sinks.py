"""Where reads and their clips go: the durable spool (for upload) or a plain folder (replay without upload).

Both take the same things: from the detect stage, a read the moment it is made (`detected`: the spool
commits it, so a crash before its clip cannot lose it); from the clip worker, the read's event id, its
CID, the metadata and a written clip file (or None when no clip could be made: the CID still counts).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from edge_agent.delivery.spool import Stored

log = logging.getLogger(__name__)


class ClipSink(Protocol):
    def detected(self, event_id: str, cid: str, metadata: dict[str, Any]) -> bool:
        """A read was made (detect thread): keep it before the next frame is looked at; False if it could
        not be kept now (its clip still comes through `put`)."""
        ...

    def part_path(self, event_id: str) -> Path:
        """Where the clip maker writes the clip before it is handed over."""
        ...

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> Stored:
        """Take ownership of the read's clip (or its CID alone): what was kept."""
        ...


class FolderSink:
    """`<event_id>.mp4` plus `<event_id>.json` (the metadata that would have been sent).

    File names come from our own event ids only: a CID never becomes a path.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def detected(self, event_id: str, cid: str, metadata: dict[str, Any]) -> bool:
        """A folder is written when the clip is made: a replay that stops early is run again."""
        return True

    def part_path(self, event_id: str) -> Path:
        return self.folder / f".{event_id}.mp4.part"

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> Stored:
        if video_part is not None:
            os.replace(video_part, self.folder / f"{event_id}.mp4")
        tmp = self.folder / f".{event_id}.json.part"
        tmp.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.folder / f"{event_id}.json")
        return Stored(True)

    def clip_path(self, event_id: str) -> Path:
        return self.folder / f"{event_id}.mp4"


class TeeSink:
    """Spool for delivery, and a copy in a folder (replay with both upload and --output-dir)."""

    def __init__(self, primary: ClipSink, copy_to: FolderSink):
        self.primary = primary
        self.copy_to = copy_to

    def detected(self, event_id: str, cid: str, metadata: dict[str, Any]) -> bool:
        return self.primary.detected(event_id, cid, metadata)

    def part_path(self, event_id: str) -> Path:
        return self.primary.part_path(event_id)

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> Stored:
        if video_part is not None:
            copy = self.copy_to.part_path(event_id)
            shutil.copyfile(video_part, copy)
            self.copy_to.put(event_id, cid, metadata, copy)
        else:
            self.copy_to.put(event_id, cid, metadata, None)
        return self.primary.put(event_id, cid, metadata, video_part)
