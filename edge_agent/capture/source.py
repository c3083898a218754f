"""Video sources: a recorded file, a V4L2 camera, an RTSP/HTTP URL, or a command's stdout.

PyAV opens all of them, so every source yields the same thing: compressed packets
(H.264, MJPEG, or raw frames from cameras that give nothing else) each stamped with
a capture time on one clock. Decoding is left to the consumer that needs pixels.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av

from edge_agent.capture.media import Packet, StreamInfo
from edge_agent.config import SourceConfig

log = logging.getLogger(__name__)

# When a live source's PTS drifts this far from the arrival clock (camera reboot, RTP
# wrap), re-anchor to arrival: detection times must stay on the capture clock.
_REANCHOR_S = 1.0
_UNTIMED_FORMATS = frozenset({"h264", "hevc", "mjpeg", "rawvideo", "mpjpeg"})


class SourceError(Exception):
    """The source cannot be opened or read; the message says what a technician can check."""


class Clock:
    """Maps a stream's PTS to capture seconds `t` and wall-clock time.

    Files: `t` is media time from the first PTS, so replay is reproducible at any speed.
    Live sources: `t` follows PTS (smooth, immune to network bursts) but is anchored to
    the monotonic clock and re-anchored on jumps, so the ring's seconds are real seconds.
    """

    def __init__(self, time_base: Fraction, live: bool, t_offset: float = 0.0):
        self.time_base = time_base
        self.live = live
        self.t_offset = t_offset
        self.mono0 = time.monotonic()
        self.wall0 = time.time()
        self._anchor_pts: int | None = None
        self._anchor_t = 0.0
        self.last_t = t_offset

    def stamp(self, pts: int | None) -> float:
        arrival = time.monotonic() - self.mono0 + self.t_offset
        if pts is None:
            t = arrival if self.live else self.last_t
        else:
            if self._anchor_pts is None:
                self._anchor_pts, self._anchor_t = pts, (arrival if self.live else self.t_offset)
            t = self._anchor_t + float((pts - self._anchor_pts) * self.time_base)
            if self.live and abs(t - arrival) > _REANCHOR_S:
                self._anchor_pts, self._anchor_t, t = pts, arrival, arrival
        self.last_t = max(self.last_t, t)
        return t

    def wall(self, t: float) -> float:
        return self.wall0 + (t - self.t_offset)


class AvSource:
    """One source session per `open()`; iterate `packets()` until it ends or fails.

    Reopening (watchdog, loop) belongs to the caller: a session is simple to reason about,
    and the caller owns the backoff and the counters.
    """

    def __init__(self, cfg: SourceConfig, path: str | None = None):
        self.cfg = cfg
        self.path = path or cfg.path
        self.info: StreamInfo | None = None
        self._container: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = threading.Event()
        self.t_offset = 0.0

    @property
    def live(self) -> bool:
        return self.cfg.kind != "file"

    @property
    def describe(self) -> str:
        return self.cfg.command if self.cfg.kind == "pipe" else str(self.path)

    def open(self) -> StreamInfo:
        self._closed.clear()
        options = dict(self.cfg.options)
        fmt = self.cfg.input_format
        timeout = (self.cfg.open_timeout_s, self.cfg.open_timeout_s)
        try:
            if self.cfg.kind == "pipe":
                target: Any = self._spawn()
            elif self.cfg.kind == "v4l2":
                target, fmt = self.path, fmt or "video4linux2"
            elif self.cfg.kind == "url":
                target = self.path
                if str(target).startswith("rtsp"):
                    options.setdefault("rtsp_transport", "tcp")
            else:
                target = self.path
            self._container = av.open(target, format=fmt, options=options, timeout=timeout)
        except (av.error.FFmpegError, OSError) as exc:
            self.close()
            raise SourceError(f"cannot open {self.cfg.kind} source {self.describe}: {exc}") from exc
        if not self._container.streams.video:
            self.close()
            raise SourceError(f"{self.describe}: no video stream in it")
        stream = self._container.streams.video[0]
        if not stream.codec_context.width:
            self.close()
            raise SourceError(f"{self.describe}: video stream has no frame size (corrupt or unsupported)")
        self.info = StreamInfo(stream)
        self._stream = stream
        return self.info

    def _spawn(self) -> Any:
        """A configured command (trusted: it comes from the technician's config, never from video)."""
        argv = shlex.split(self.cfg.command or "")
        if not argv:
            raise SourceError("source.command is empty")
        try:
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0)
        except OSError as exc:
            raise SourceError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
        return self._proc.stdout

    def packets(self) -> Iterator[Packet]:
        """Demux packets, stamping each with its capture time; paced if `realtime`.

        Packets without data (demuxer flush markers) are skipped; a corrupt packet stops
        nothing: FFmpeg resynchronises and the counters show it.
        """
        if self._container is None or self.info is None:
            raise SourceError("source not open")
        info, stream = self.info, self._stream
        clock = Clock(info.time_base, live=self.live, t_offset=self.t_offset)
        pace = self.cfg.realtime and not self.live
        # raw elementary streams (rpicam-vid's H.264, MJPEG from a pipe) carry no real timestamps:
        # FFmpeg invents them from an assumed rate, so live ones are stamped on arrival instead
        untimed = self.live and self._container.format.name in _UNTIMED_FORMATS
        frame_s = 1.0 / info.fps if info.fps else 1 / 30
        try:
            for pkt in self._container.demux(stream):
                if pkt.size == 0:
                    continue
                pts = None if untimed else pkt.pts if pkt.pts is not None else pkt.dts
                t = clock.stamp(pts)
                if pts is None:  # raw elementary streams carry no timestamps: derive them
                    pts = round(t / info.time_base)
                if pace:
                    delay = clock.mono0 + (t - self.t_offset) - time.monotonic()
                    if delay > 0 and self._closed.wait(delay):
                        return
                yield Packet(bytes(pkt), pts, pkt.dts, bool(pkt.is_keyframe), t, clock.wall(t), info)
                if self._closed.is_set():
                    return
        except av.error.EOFError:
            pass
        except av.error.FFmpegError as exc:
            if not self._closed.is_set():
                raise SourceError(f"{self.describe}: read failed: {exc}") from exc
        finally:
            self.t_offset = clock.last_t + frame_s

    def interrupt(self) -> None:
        """From any thread: make `packets()` return soon. A pipe read is unblocked by ending the command;
        the container itself is closed only by the thread reading it (FFmpeg contexts are not thread-safe)."""
        self._closed.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def close(self) -> None:
        """From the reading thread, more than once if need be."""
        self._closed.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a half-open container must never mask the real error
                log.debug("source close error", exc_info=True)
            self._container = None
        if self._proc is not None and self._proc.stdout:
            self._proc.stdout.close()
        self._proc = None
