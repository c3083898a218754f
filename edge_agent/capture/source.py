"""Video sources: a recorded file, a V4L2 camera, an RTSP/HTTP URL, or a command's stdout.

PyAV opens all of them, so every source yields the same thing: compressed packets
(H.264, MJPEG, or raw frames from cameras that give nothing else) each stamped with
a capture time on one clock. Decoding is left to the consumer that needs pixels.

What differs between kinds is only how FFmpeg is asked to open them: one opener each (`OPENERS`).
A session's clock is chosen once when it starts reading (`AvSource._clock`), and a session says
where it ended on the capture clock (`read` returns a `SessionEnd`), so the next one carries on
from there.

A camera's reads and opens wait no longer than source.open_timeout_s, whatever FFmpeg is doing (probing,
reading): a network source through PyAV's `timeout=` (FFmpeg's interrupt callback, which its network code
polls every 0.1 s; a read also ends once source.stall_s passes, the stall it is), a command's stdout through
`PipeReader` (FFmpeg's callback is never consulted on a pipe). A pipe read also ends at once on
`interrupt()`; PyAV has no such call for FFmpeg's own network reads, so a stop does not wait for one
(`CaptureSupervisor.let_go`). A V4L2 device's read is its driver's, which no FFmpeg timeout reaches: the
capture stage's bound on each of its steps says when one hangs (`CaptureStatus.overdue_s`).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import av

from edge_agent import const
from edge_agent.capture import h264
from edge_agent.capture.clock import ArrivalFrameClock, CaptureClock, FrameCountClock, PtsClock, measure_fps
from edge_agent.capture.command_output import CommandOutput
from edge_agent.capture.media import Packet, StreamInfo
from edge_agent.capture.pipe_reader import PipeReader
from edge_agent.capture.raw_encoder import RawEncoder, RawEncoderError
from edge_agent.capture.session import Session, SessionEnd, SourceError, SourceSilent, read_session
from edge_agent.config import SourceConfig
from edge_agent.redact import redact

log = logging.getLogger(__name__)

# Demuxers of elementary streams: no timestamps of their own (FFmpeg invents them at 25 fps).
_UNTIMED_FORMATS = frozenset({"h264", "hevc", "mjpeg", "rawvideo", "mpjpeg"})
# Untimed camera streams are read this long before the first packet is handed on, so the clock
# starts on the pipe's real rhythm (and FFmpeg's probing backlog is stamped back in its own time);
# longer when the frame rate itself must be measured.
_PRIME_S = 1.0
_MEASURE_S = 2.0
_ASSUMED_FPS = 30.0


@dataclass
class Opening:
    """How FFmpeg opens one source: what to open (a path, a URL, a command's stdout), with which
    demuxer and options, and the command's process and the reader of its stdout if there is one."""

    target: Any
    format: str | None
    options: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    reader: PipeReader | None = None
    said: CommandOutput | None = None


def open_file(cfg: SourceConfig, path: str) -> Opening:
    """A recorded file: FFmpeg finds the format itself."""
    return Opening(path, cfg.input_format, dict(cfg.options))


def open_v4l2(cfg: SourceConfig, path: str) -> Opening:
    """A V4L2 camera device (/dev/videoN)."""
    return Opening(path, cfg.input_format or "video4linux2", dict(cfg.options))


def open_url(cfg: SourceConfig, path: str) -> Opening:
    """An RTSP or HTTP stream. RTSP goes over TCP unless the options say otherwise: UDP loses packets
    (and so whole GOPs) on any busy network."""
    options = dict(cfg.options)
    if path.startswith("rtsp"):
        options.setdefault("rtsp_transport", "tcp")
    return Opening(path, cfg.input_format, options)


def open_pipe(cfg: SourceConfig, path: str) -> Opening:
    """A configured command's stdout (trusted: it comes from the technician's config, never from video),
    as rpicam-vid or ffmpeg write a camera's stream."""
    argv = shlex.split(cfg.command or "")
    if not argv:
        raise SourceError("source.command is empty")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                bufsize=0)
    except OSError as exc:
        raise SourceError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    said = CommandOutput(proc.stderr, os.path.basename(argv[0]))  # masked and bounded, never raw to the journal
    reader = PipeReader(proc.stdout.fileno(), cfg.open_timeout_s)
    return Opening(reader, cfg.input_format, dict(cfg.options), proc, reader, said)


# One opener per kind FFmpeg reads; picamera2 has a session class of its own (make_source).
OPENERS: dict[str, Callable[[SourceConfig, str], Opening]] = {
    "file": open_file, "v4l2": open_v4l2, "url": open_url, "pipe": open_pipe}


def make_source(cfg: SourceConfig, path: str | None = None, encoders: Sequence[str] | None = None) -> Session:
    """The session for a source kind: `AvSource` for everything FFmpeg opens (with the kind's opener),
    `Picamera2Source` for a Pi CSI camera through picamera2 (imported only for that kind). Both are a
    `Session`."""
    if cfg.kind == "picamera2":
        from edge_agent.capture.picamera2_source import Picamera2Source  # picamera2 only where it is asked for

        return Picamera2Source(cfg, path, encoders)
    return AvSource(cfg, path, encoders)


def _no_data(what: str, seconds: float, key: str) -> SourceSilent:
    """A source that sent nothing for as long as `key` allows, in one wording wherever it is found."""
    return SourceSilent(f"{what}: no data for {seconds:g} s ({key})")


class AvSource:
    """One source session per `open()`; iterate `packets()` (or `read`) until it ends or fails.

    Reopening (watchdog, loop) belongs to the caller: a session is simple to reason about,
    and the caller owns the backoff and the counters. Raw frames are encoded to H.264 here
    (`encoders`: tried in order, as clip.encoders), so everything downstream holds compressed video.
    """

    gives_pictures = False  # packets only: the detector's frames are decoded from them

    def __init__(self, cfg: SourceConfig, path: str | None = None, encoders: Sequence[str] | None = None):
        self.cfg = cfg
        self.path = path or cfg.path
        self.encoders = list(encoders or const.ENCODERS)
        self._opener = OPENERS[cfg.kind]
        # a camera (a device, a stream, a command) runs at its own pace and is reopened when it fails;
        # a recorded file is read at ours and ends
        self.camera = cfg.kind != "file"
        self.info: StreamInfo | None = None
        self.fps_from: str | None = None  # where info.fps came from: stream, sps, config, measured, assumed
        self._container: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._said: CommandOutput | None = None
        self._reader: PipeReader | None = None
        self._closed = threading.Event()
        self._raw: RawEncoder | None = None
        self._untimed = False
        self._prefetched: list[tuple[Any, float]] = []
        self._mono0 = time.monotonic()
        self._start_t = 0.0

    @property
    def describe(self) -> str:
        """The source for messages and pages, its login masked."""
        return redact(self.cfg.command or "" if self.cfg.kind == "pipe" else str(self.path))

    def open(self, start_t: float = 0.0) -> StreamInfo:
        """Open the source; its packets' capture times start at `start_t` (where the session before ended)."""
        self._closed.clear()
        self._prefetched = []
        self._start_t = start_t
        # opening (FFmpeg's probing included) within open_timeout_s; a read no longer than a stall lasts
        timeout = (self.cfg.open_timeout_s, min(self.cfg.open_timeout_s, self.cfg.stall_s))
        self._mono0 = time.monotonic()
        try:
            opening = self._opener(self.cfg, str(self.path))
            self._proc, self._reader, self._said = opening.proc, opening.reader, opening.said
            if self._closed.is_set():  # interrupted while the command started, before `_proc` was there
                self.close()
                raise SourceError(f"{self.describe}: stopped while opening")
            self._container = av.open(opening.target, format=opening.format, options=opening.options,
                                      timeout=timeout)
        except (av.error.FFmpegError, OSError) as exc:
            error = self._failed(f"cannot open {self.cfg.kind} source {self.describe}", exc)
            self.close()
            raise error from exc
        if self._closed.is_set():  # a pipe interrupted while FFmpeg probed it ends as an EOF would
            self.close()
            raise SourceError(f"{self.describe}: stopped while opening")
        if not self._container.streams.video:
            self.close()
            raise SourceError(f"{self.describe}: no video stream in it")
        stream = self._container.streams.video[0]
        if not stream.codec_context.width:
            self.close()
            raise SourceError(f"{self.describe}: video stream has no frame size (corrupt or unsupported)")
        self._stream = stream
        self._untimed = bool(set(self._container.format.name.split(",")) & _UNTIMED_FORMATS)
        try:
            info = StreamInfo(stream)
            fps = self._frame_rate(info)
            if stream.codec_context.name == "rawvideo":
                self._raw = RawEncoder(stream, fps or _ASSUMED_FPS, self.encoders)
                info = self._raw.info
            info.fps = fps
        except (RawEncoderError, av.error.FFmpegError, ValueError) as exc:
            self.close()
            raise SourceError(f"{self.describe}: {exc}") from exc
        except SourceError:
            self.close()
            raise
        self.info = info
        return info

    def _frame_rate(self, info: StreamInfo) -> float | None:
        """The stream's true rate. Timed streams: what the container says. Elementary streams: the
        H.264 SPS timing info, else source.fps, else (camera) measured on the first seconds of arrivals,
        which are kept to be handed on (file: FFmpeg's guess)."""
        if not self._untimed:
            self.fps_from = "stream"
            return info.fps
        fps = h264.stream_fps(info.extradata) if info.codec == "h264" else None
        self.fps_from = "sps"
        if fps is None and self.cfg.fps:
            fps, self.fps_from = self.cfg.fps, "config"
        if not self.camera:
            if fps is None:
                fps, self.fps_from = info.fps, "stream"
            return fps
        arrivals = self._prefetch(_PRIME_S if fps else _MEASURE_S)
        if fps is None and info.codec == "h264" and self._prefetched:  # SPS in-band only
            fps = h264.stream_fps(None, bytes(self._prefetched[0][0]))
        if fps is None:
            measured = measure_fps(arrivals)
            if measured:
                fps, self.fps_from = measured, "measured"
                log.info("source frame rate measured fps=%.3f over %d frames (set source.fps to fix it)",
                         fps, len(arrivals))
            else:
                fps, self.fps_from = _ASSUMED_FPS, "assumed"
                log.warning("source frame rate unknown: assuming %g fps (set source.fps)", fps)
        return fps

    def _arrival(self) -> float:
        """When the packet FFmpeg hands over now came in, on the session clock (seconds since it opened, from
        `start_t`): a pipe's last bytes, so the frame its parser still holds when the stream ends (a camera
        that stalled, a stop) keeps the time it came in, not the moment the end was found; else now."""
        came = self._reader.last_data if self._reader is not None else time.monotonic()
        return came - self._mono0 + self._start_t

    def _failed(self, what: str, exc: Exception, reading: bool = False) -> SourceError:
        """An open or read that failed, in words: a source silent past its deadline says which (FFmpeg's own
        words for PyAV's timeout are "Immediate exit requested")."""
        cfg = self.cfg
        if self._reader is not None and self._reader.ended == "silent":
            return _no_data(what, cfg.open_timeout_s, "source.open_timeout_s")
        if isinstance(exc, av.error.ExitError):
            if reading and cfg.stall_s < cfg.open_timeout_s:
                return _no_data(what, cfg.stall_s, "source.stall_s")
            return _no_data(what, cfg.open_timeout_s, "source.open_timeout_s")
        ended = self._command_ended()
        return SourceError(f"{what}: {ended} ({exc})" if ended else f"{what}: {exc}")

    def _command_ended(self) -> str | None:
        """A camera command that exited, in its own words ("rpicam-vid: no cameras available" says more
        than FFmpeg's "Invalid data"); None while it runs or for a source without a command."""
        proc, said = self._proc, self._said
        if proc is None or said is None:
            return None
        try:
            code = proc.wait(timeout=0.5)  # its stdout ended: it is exiting, or it closed stdout and runs on
        except subprocess.TimeoutExpired:
            return None
        words = said.last_words()
        return f"the command exited {code}" + (f": {words}" if words else " without a word on stderr")

    def _silent(self) -> SourceError | None:
        """A pipe that went silent for open_timeout_s ended its stream as an EOF would (what FFmpeg held
        was handed on): the session still failed, and says why."""
        if self._reader is not None and self._reader.ended == "silent" and not self._closed.is_set():
            return _no_data(self.describe, self.cfg.open_timeout_s, "source.open_timeout_s")
        return None

    def _prefetch(self, seconds: float) -> list[float]:
        """Read packets for `seconds` after the first, keeping each with its arrival time."""
        first: float | None = None
        try:
            for pkt in self._container.demux(self._stream):
                if pkt.size == 0:
                    continue
                now = self._arrival()
                self._prefetched.append((pkt, now))
                first = now if first is None else first
                if now - first >= seconds or self._closed.is_set():
                    break
        except av.error.EOFError:
            pass
        except av.error.FFmpegError as exc:
            raise self._failed(f"{self.describe}: read failed", exc, reading=True) from exc
        return [a for _, a in self._prefetched]

    def _arrivals(self) -> Iterator[tuple[Any, float]]:
        """Demuxed packets with their arrival on the session clock, the read-ahead ones first."""
        pre, self._prefetched = self._prefetched, []
        yield from pre
        for pkt in self._container.demux(self._stream):
            if pkt.size:
                yield pkt, self._arrival()

    def _clock(self, frame_s: float) -> CaptureClock:
        """The session's clock, chosen once: a stream's own timestamps (media time for a file, anchored to
        arrival for a camera), or for an elementary stream without any, frames counted at the stream's
        rate (a file) or stamped from their arrival at that rate (a camera)."""
        assert self.info is not None
        if not self._untimed:
            return PtsClock(self._stream.time_base or self.info.time_base, arrival_anchored=self.camera,
                            start_t=self._start_t, frame_s=frame_s)
        if self.camera:
            return ArrivalFrameClock(1.0 / frame_s, [a for _, a in self._prefetched], self._start_t)
        return FrameCountClock(self._start_t, frame_s)

    def _frame_s(self) -> float:
        fps = self.info.fps if self.info is not None else None
        return 1.0 / fps if fps else 1 / _ASSUMED_FPS

    def read(self, deliver: Callable[[Packet], bool]) -> SessionEnd:
        """Hand every packet to `deliver` until it returns False, the source ends or the session is
        interrupted; says where the session ended on the capture clock."""
        return read_session(self.packets(), self._start_t, self._frame_s(), deliver)

    def packets(self) -> Iterator[Packet]:
        """Demux packets, stamping each with its capture time; a file is paced if `realtime`.

        Packets without data (demuxer flush markers) are skipped; a corrupt packet stops
        nothing: FFmpeg resynchronises and the counters show it.
        """
        if self._container is None or self.info is None:
            raise SourceError("source not open")
        info = self.info
        pace = self.cfg.realtime and not self.camera
        frame_s = self._frame_s()
        clock = self._clock(frame_s)
        start_t = self._start_t
        try:
            for pkt, arrival in self._arrivals():
                t = clock.stamp(pkt.pts if pkt.pts is not None else pkt.dts, arrival)
                if pace:
                    delay = self._mono0 + (t - start_t) - time.monotonic()
                    if delay > 0 and self._closed.wait(delay):
                        return
                # the capture's moment on the monotonic clock (its wall time is computed from it when
                # asked): a timed camera stream's `t` runs late by its anchor's delay (untimed pipes never
                # run late: their lag stays 0). A file's is the session's start plus its media time, so a
                # replay's clips and detections keep their media-time spacing.
                mono = self._mono0 + (t - start_t) - clock.lag
                if self._raw is not None:
                    yield from self._raw.encode(pkt, t, mono)
                elif self._untimed:
                    # the demuxer's timestamps are its own guess: the stamped time is the truth
                    pts = round(t / info.time_base)
                    yield Packet(bytes(pkt), pts, pts, bool(pkt.is_keyframe), t, mono, info)
                else:
                    pts = pkt.pts if pkt.pts is not None else pkt.dts
                    if pts is None:  # a demuxer that gave no time at all: the capture time is all there is
                        pts = round(t / info.time_base)
                    yield Packet(bytes(pkt), pts, pkt.dts, bool(pkt.is_keyframe), t, mono, info)
                if self._closed.is_set():
                    return
        except av.error.EOFError:
            pass
        except av.error.FFmpegError as exc:
            if not self._closed.is_set():
                raise self._failed(f"{self.describe}: read failed", exc, reading=True) from exc
        except RawEncoderError as exc:
            raise SourceError(f"{self.describe}: {exc}") from exc
        if self._raw is not None and not self._closed.is_set():
            try:
                yield from self._raw.flush()
            except RawEncoderError as exc:
                raise SourceError(f"{self.describe}: {exc}") from exc
        silent = self._silent()
        if silent is not None:
            raise silent

    def interrupt(self) -> None:
        """From any thread: make `packets()` return soon. A pipe read is unblocked by ending the command;
        the container itself is closed only by the thread reading it (FFmpeg contexts are not thread-safe)."""
        self._closed.set()
        reader = self._reader
        if reader is not None:
            reader.interrupt()  # the read waiting now ends, even if the command outlives its SIGTERM
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def close(self) -> None:
        """From the reading thread, more than once if need be."""
        self._closed.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=const.COMMAND_STOP_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a half-open container must never mask the real error
                log.debug("source close error", exc_info=True)
            self._container = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._proc is not None and self._proc.stdout:
            self._proc.stdout.close()
        self._proc = None
        self._said = None
