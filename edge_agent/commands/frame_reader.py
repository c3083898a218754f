"""A camera or file opened the daemon's way and read as decoded frames, for the commands that show a
technician what the camera sees (`snapshot`, `tune` and its web page): one source open for a whole
session, the newest frame on demand, a fault as one line with its cause and check's hint.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent import const
from edge_agent.commands.common import stop_on_signals
from edge_agent.redact import redact

if TYPE_CHECKING:
    from edge_agent.app import Agent
    from edge_agent.capture.session import Session


class FrameReader:
    """Holds the source open and hands out decoded frames: a camera is opened once for a whole `tune`
    session (re-opening a Pi camera takes seconds), and its stream is read continuously so what is
    shown is the newest picture, never a stale buffered one."""

    def __init__(self, src: Session):
        from edge_agent.capture.media import open_decoder

        self.src = src
        info = self.src.open()
        self.info = info
        self._dec = None if src.gives_pictures else open_decoder(info)
        self._packets = self.src.packets()

    @property
    def camera(self) -> bool:
        return self.src.camera

    def frames(self) -> Iterator[tuple[Any, float]]:
        import av

        from edge_agent.capture.media import to_av_packet

        t = 0.0
        for pkt in self._packets:
            t = pkt.t
            if self.src.gives_pictures:  # a camera's own pictures (picamera2 lores): nothing to decode
                if not hasattr(pkt, "keyframe"):
                    yield av.VideoFrame.from_ndarray(np.ascontiguousarray(pkt.gray), format="gray"), pkt.t
                continue
            try:
                decoded = self._dec.decode(to_av_packet(pkt, self.info.time_base))
            except av.error.FFmpegError:
                continue
            for f in decoded:
                yield f, pkt.t
        if self._dec is None:
            return
        try:  # the decoder's threads still hold the last frames (all of a single picture)
            for f in self._dec.decode(None):
                yield f, t
        except av.error.FFmpegError:
            return

    def every(self, period_s: float) -> Iterator[tuple[Any, float]]:
        """One frame per `period_s`: of media time for a file, of wall time for a camera (reading all the
        frames in between, so the pipe never backs up)."""
        next_at = time.monotonic() if self.camera else 0.0
        for f, t in self.frames():
            now = time.monotonic() if self.camera else t
            if now >= next_at:
                next_at = now + period_s
                yield f, t

    def close(self) -> None:
        self.src.close()


def open_reader(agent: Agent, command: str, stop: threading.Event) -> FrameReader:
    """The source opened the daemon's way; a fault is one line with its cause and check's hint. From
    here on Ctrl-C and SIGTERM set `stop` and end the source's reads, the open included: a camera that
    never sends is waited on there, and stopping that wait exits 0."""
    from edge_agent.capture.session import SourceError
    from edge_agent.commands.check import source_hint

    cfg = agent.cfg.source
    where = redact(cfg.command or "" if cfg.kind == "pipe" else str(cfg.path))
    src = agent.source()
    stop_on_signals(stop, then=src.interrupt)
    try:
        return FrameReader(src)
    except SourceError as exc:
        if stop.is_set():
            print(f"edge-agent {command}: stopped before a frame came", file=sys.stderr)
            raise SystemExit(0) from None
        missing = cfg.kind in ("file", "v4l2") and not Path(where).exists()
        print(f"edge-agent {command}: {exc}", file=sys.stderr)
        print(f"  -> {source_hint(cfg.kind, where, str(exc))}", file=sys.stderr)
        raise SystemExit(const.EXIT_NOINPUT if missing else const.EXIT_DATAERR) from None
