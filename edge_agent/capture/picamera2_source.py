"""A Raspberry Pi CSI camera through picamera2: the camera's own H.264 for the ring, the ISP's small
`lores` picture for the detector, and nothing decoded.

picamera2 runs the camera with two streams at once: `main` at full size, encoded to H.264 by
`picamera2.encoders.H264Encoder` (the hardware encoder on a Pi 4; on a Pi 5, which has none, picamera2
gives its libav software encoder under the same name), and `lores`, a small YUV420 copy the ISP scales
for nothing. The encoder hands each packet to its `Output.outputframe(frame, keyframe, timestamp,
packet, audio)`, `timestamp` being microseconds of sensor time since the encoder's first frame
(`encoder.firsttimestamp`, in sensor microseconds); `capture_request()` hands over each completed
request, whose lores Y plane is the detector's picture and whose `SensorTimestamp` (nanoseconds) is on
the same sensor clock. A session therefore yields two things on one clock: packets (for the ring and
clips, remuxed as the encoder wrote them) and pictures (for detection). The capture stage gets each
picture still in the camera's buffer (`CameraPicture`, seen through picamera2's `MappedArray`): only
those the decode stage picks for the detector have their Y plane copied out, the rest are never
copied (a third of the frames are analysed at the default rate).

picamera2 is the `python3-picamera2` package of Raspberry Pi OS (it needs libcamera's Python bindings,
which PyPI does not have): the agent's virtualenv must see the system's site-packages. It is imported
only when this source opens, so every other source works without it.

Built to picamera2's source (its `Picamera2` and job queue, `H264Encoder`, `Output`, `CompletedRequest`
and `MappedArray` interfaces, read at 0.3.36) and tested against tests/picamera2_standin, which keeps that
interface and behaviour and plays a recorded stream; it has not been run on a Raspberry Pi.
"""

from __future__ import annotations

import inspect
import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from fractions import Fraction
from functools import partial
from typing import Any

import av
import numpy as np

from edge_agent.capture.media import CameraPicture, GrayFrame, Packet, StreamInfo
from edge_agent.capture.session import SessionEnd, SourceError, read_session
from edge_agent.config import SourceConfig
from edge_agent.config.pi_models import PICAMERA2_FPS, picamera2_warnings

log = logging.getLogger(__name__)

MISSING_HINT = ("install Raspberry Pi OS's python3-picamera2 (apt install python3-picamera2) and let the agent's "
                "virtualenv see it (python3 -m venv --system-site-packages), or use the rpicam-vid pipe source "
                "(configs/pi-csi.yaml)")
# The system's picamera2 stack (simplejpeg, libcamera's bindings) is built on the OS's own numpy; a numpy 2
# in the virtualenv fails its import with "numpy.dtype size changed" (a ValueError).
NUMPY_HINT = ("the virtualenv's numpy {version} is not the one Raspberry Pi OS built its picamera2 stack for: let the "
              "virtualenv use the system's numpy (python3-numpy; pip uninstall numpy in the virtualenv) or install "
              "numpy<2 in it, or use the rpicam-vid pipe source (configs/pi-csi.yaml)")
# Packet timestamps are sensor microseconds: muxing keeps them exactly.
TIME_BASE = Fraction(1, 1_000_000)
# How often a wait for the next picture looks up to see whether the session was interrupted.
POLL_S = 0.25
DEFAULT_FPS = PICAMERA2_FPS
# How long closing may take: a healthy camera stops in about a frame (the stop job) plus the encoder's
# last output (picamera2's V4L2 encoder gives up on it after 400 ms). Past this the camera or its encoder
# hangs, and the capture thread goes on without it.
CLOSE_TIMEOUT_S = 3.0


class Picamera2Unavailable(Exception):
    """picamera2 cannot be imported; the message is one line with the hint."""


def import_picamera2() -> tuple[Any, Any, Any, Any]:
    """(Picamera2, H264Encoder, Output, MappedArray), or Picamera2Unavailable saying what to install."""
    try:
        from picamera2 import MappedArray, Picamera2
        from picamera2.encoders import H264Encoder
        from picamera2.outputs import Output
    except Exception as exc:
        # any failure of the camera stack's import is the same fault to a technician: ImportError (not
        # installed, libcamera's bindings missing or built for another libcamera), ValueError (simplejpeg
        # built on numpy 1 under numpy 2), AttributeError (bindings older than picamera2), OSError (a
        # native library that does not load)
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())
        hint = NUMPY_HINT.format(version=np.__version__) if "numpy" in cause else MISSING_HINT
        raise Picamera2Unavailable(f"picamera2 cannot be imported ({cause}): {hint}") from exc
    return Picamera2, H264Encoder, Output, MappedArray


def read_only(mapped_array: Any) -> dict[str, bool]:
    """MappedArray's keyword for a read-only mapping: `write=False` syncs the buffer for reading only
    (DMA_BUF_SYNC_READ; the default, write=True, syncs it for writing too, cache maintenance on every copy).
    picamera2 before 0.3.13 has no `write`: it maps the buffer with no sync at all."""
    return {"write": False} if "write" in inspect.signature(mapped_array).parameters else {}


def _output_class(base: Any) -> Any:
    """An `Output` (picamera2 checks the type) that hands each encoded frame to a queue: it runs on
    picamera2's encoder thread, which must never wait on the agent."""

    class QueueOutput(base):  # type: ignore[misc, valid-type]
        def __init__(self, into: queue.SimpleQueue[tuple[bytes, bool, int]]):
            super().__init__()
            self._into = into

        def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
                        packet: Any = None, audio: bool = False) -> None:
            if audio or frame is None or timestamp is None:
                return
            self._into.put((bytes(frame), bool(keyframe), int(timestamp)))

    return QueueOutput


def stream_info(keyframe: bytes, fps: float) -> StreamInfo:
    """The codec parameters of the camera's H.264, read from its first keyframe (which carries the
    SPS and PPS: the encoder repeats them at every keyframe)."""
    with av.open(io.BytesIO(keyframe), format="h264") as probe:
        info = StreamInfo(probe.streams.video[0])
    info.time_base = TIME_BASE
    info.fps = fps
    return info


class Picamera2Source:
    """One camera session per `open()`, as `AvSource`: iterate `packets()` (or `read`) until it ends or fails.

    `packets()` yields the encoder's `Packet`s and the lores `GrayFrame`s (`read` hands on
    `CameraPicture`s instead, copied only if taken), each stamped with its sensor time on the session
    clock (the `start_t` given to `open` + seconds since the session's first frame)."""

    gives_pictures = True  # the detector's frames come from the camera, not from decoding packets
    camera = True

    def __init__(self, cfg: SourceConfig, path: str | None = None, encoders: Sequence[str] | None = None):
        self.cfg = cfg
        self.path = path
        self.info: StreamInfo | None = None
        self.fps_from: str | None = None
        self._start_t = 0.0
        self._cam: Any = None
        self._encoder: Any = None
        self._encoded: queue.SimpleQueue[tuple[bytes, bool, int]] = queue.SimpleQueue()
        self._pending: list[tuple[bytes, bool, int]] = []
        self._closed = threading.Event()
        self._lores: tuple[int, int] = (0, 0)
        self._mapped_array: Any = None  # picamera2.MappedArray: a request's buffer as an array, not copied
        self._read_only: dict[str, bool] = {}
        # the capture job picamera2 has queued or finished and nobody has taken the result of: close() must
        # cancel it (it holds every job behind it, the stop job too) or give back the request it holds
        self._job: Any = None
        self._base_us: int | None = None
        self._mono0 = 0.0
        self._base_lock = threading.Lock()

    @property
    def describe(self) -> str:
        p = self.cfg.picamera2
        return f"picamera2 camera {p.camera} ({p.width}x{p.height}, lores {p.lores_width}x{p.lores_height})"

    def open(self, start_t: float = 0.0) -> StreamInfo:
        """Start the camera; its capture times start at `start_t` (where the session before ended)."""
        self._closed.clear()
        self._start_t = start_t
        self._base_us = None
        try:
            picamera2_cls, encoder_cls, output_base, self._mapped_array = import_picamera2()
        except Picamera2Unavailable as exc:
            raise SourceError(str(exc)) from exc
        self._read_only = read_only(self._mapped_array)
        p = self.cfg.picamera2
        fps = self.cfg.fps or DEFAULT_FPS
        _warn_once(self.cfg)
        self.fps_from = "camera"  # the sensor runs at the configured rate and stamps every frame
        try:
            self._cam = picamera2_cls(p.camera)
            config = self._cam.create_video_configuration(
                main={"size": (p.width, p.height), "format": "YUV420"},
                lores={"size": (p.lores_width, p.lores_height), "format": "YUV420"},
                controls={"FrameRate": fps})
            self._cam.configure(config)
            lores = self._cam.camera_configuration()["lores"]
            self._lores = (int(lores["size"][0]), int(lores["size"][1]))
            # repeat: SPS/PPS before every keyframe, so a clip cut at any keyframe decodes on its own
            self._encoder = encoder_cls(bitrate=p.bitrate, repeat=True, iperiod=p.keyframe_every)
            self._cam.start_recording(self._encoder, _output_class(output_base)(self._encoded))
        except Exception as exc:  # libcamera's errors have no common type: no camera, busy, bad size
            self.close()
            raise SourceError(f"cannot start {self.describe}: {exc}") from exc
        first = self._first_keyframe()
        self.info = stream_info(first[0], fps)
        self._pending = [first]
        return self.info

    def _first_keyframe(self) -> tuple[bytes, bool, int]:
        deadline = time.monotonic() + self.cfg.open_timeout_s
        while not self._closed.is_set():
            try:
                item = self._encoded.get(timeout=max(0.01, min(POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    self.close()
                    raise SourceError(f"{self.describe}: no keyframe from the encoder in "
                                      f"{self.cfg.open_timeout_s:g} s") from None
                continue
            if item[1]:
                return item
        self.close()
        raise SourceError(f"{self.describe}: stopped while opening")

    def _session_t(self, sensor_us: int) -> tuple[float, float]:
        """(capture time on the session clock, the capture's moment on the monotonic clock) of a sensor
        timestamp. The session starts at the first frame either stream gives; both are stamped by the
        same sensor clock."""
        with self._base_lock:
            if self._base_us is None:
                self._base_us, self._mono0 = sensor_us, time.monotonic()
            rel = (sensor_us - self._base_us) / 1e6
        return self._start_t + rel, self._mono0 + rel

    def _packet(self, item: tuple[bytes, bool, int]) -> Packet:
        data, keyframe, ts = item
        assert self.info is not None
        first = self._encoder.firsttimestamp or 0  # sensor microseconds of the encoder's first frame
        t, mono = self._session_t(first + ts)
        pts = round((t - self._start_t) / TIME_BASE)
        return Packet(data, pts, pts, keyframe, t, mono, self.info)

    def _lores_luma(self, request: Any) -> np.ndarray:
        """A copy of the lores Y plane, and of nothing else: `MappedArray` shows the request's buffer (YUV420
        as a (h*3/2, stride) array) without copying it, and only the first h rows, w bytes each, are copied
        out (`make_array` would copy the whole buffer, chroma rows and stride padding included)."""
        w, h = self._lores
        with self._mapped_array(request, "lores", **self._read_only) as m:
            return np.array(m.array[:h, :w])

    def _drain(self) -> Iterator[Packet]:
        pending, self._pending = self._pending, []
        for item in pending:
            yield self._packet(item)
        while True:
            try:
                item = self._encoded.get_nowait()
            except queue.Empty:
                return
            yield self._packet(item)

    def packets(self) -> Iterator[Packet | GrayFrame]:
        """The encoder's packets as they come, and after them each completed request's picture (its Y
        plane copied, to keep). A wait for a request looks up every POLL_S: `interrupt()` (a stall, a stop)
        ends the session."""
        for item in self._items():
            yield item.take() if isinstance(item, CameraPicture) else item

    def _items(self) -> Iterator[Packet | CameraPicture]:
        """As `packets`, each picture still in the camera's buffer: the request goes back to the camera when
        the consumer is done with it (the generator resumes)."""
        if self._cam is None or self.info is None:
            raise SourceError("source not open")
        try:
            while not self._closed.is_set():
                self._job = job = self._cam.capture_request(wait=False)
                request = None
                while request is None:
                    yield from self._drain()
                    if self._closed.is_set():
                        return  # the job stays in self._job for close()
                    try:
                        request = self._cam.wait(job, timeout=POLL_S)
                    # picamera2's Job.get_result times out with concurrent.futures.TimeoutError: the built-in
                    # TimeoutError only from Python 3.11 on (JetPack 6 runs 3.10). Folding the pair into
                    # TimeoutError (ruff's UP041) is right only once the project requires 3.11.
                    except (TimeoutError, futures.TimeoutError):
                        continue
                self._job = None
                try:
                    sensor_ns = int(request.get_metadata()["SensorTimestamp"])
                    t, mono = self._session_t(sensor_ns // 1000)
                    yield CameraPicture(t, mono, partial(self._lores_luma, request))
                finally:
                    request.release()
        except SourceError:
            raise
        except Exception as exc:  # the camera stack's own failures end the session; the supervisor reopens
            if not self._closed.is_set():
                raise SourceError(f"{self.describe}: read failed: {exc}") from exc

    def read(self, deliver: Callable[[Packet | CameraPicture], bool]) -> SessionEnd:
        """Hand every packet and picture to `deliver` until it returns False or the session is
        interrupted; says where the session ended on the capture clock. Pictures are handed on still in
        the camera's buffer: a consumer takes (copies) only the ones it keeps, before `deliver` returns."""
        fps = self.info.fps if self.info is not None else None
        return read_session(self._items(), self._start_t, 1.0 / (fps or DEFAULT_FPS), deliver)

    def interrupt(self) -> None:
        """From any thread: `packets()` returns within POLL_S."""
        self._closed.set()

    def close(self) -> None:
        """From the reading thread: give back what the session holds, stop the encoder and the camera, and
        give the camera back, waiting at most CLOSE_TIMEOUT_S.

        picamera2 runs a stop as a job queued behind the others, and a capture job waits for a frame with no
        timeout: with the camera stalled, `stop_recording()` behind the session's pending capture never
        returns. So the pending jobs are cancelled first (`cancel_all_and_flush`, as picamera2's own
        tests/wait_cancel_test.py does before stopping), and a request the capture job already took is
        released. Even so a hung encoder holds picamera2's lock (its V4L2 encoder waits for a buffer with no
        timeout), so all of it runs on a thread of its own: past the bound, the capture thread goes on, the
        camera left to that thread (reopening it then fails while it is busy, and is retried)."""
        self._closed.set()
        cam, self._cam = self._cam, None
        job, self._job = self._job, None
        recording, self._encoder = self._encoder is not None, None
        if cam is None:
            return
        done = threading.Event()
        threading.Thread(target=_give_back, args=(cam, job, recording, done), daemon=True,
                         name="picamera2-close").start()
        if not done.wait(CLOSE_TIMEOUT_S):
            log.warning("picamera2 camera %d did not stop in %g s (the camera or its encoder hangs): going on "
                        "without it; it stays busy until it stops or the agent restarts", self.cfg.picamera2.camera,
                        CLOSE_TIMEOUT_S)


def _give_back(cam: Any, job: Any, recording: bool, done: threading.Event) -> None:
    """Cancel the pending jobs, release the request a finished capture job holds, stop, close."""
    try:
        cancel = getattr(cam, "cancel_all_and_flush", None)  # picamera2 0.3.20 and later
        if cancel is not None:
            cancel()
        if job is not None:
            _release_result(cam, job)
        try:
            if recording:
                cam.stop_recording()
        except Exception:  # a camera that failed half-way must still be closed
            log.debug("picamera2 stop_recording failed", exc_info=True)
        try:
            cam.close()
        except Exception:
            log.debug("picamera2 close failed", exc_info=True)
    finally:
        done.set()


def _release_result(cam: Any, job: Any) -> None:
    """A capture job's request back to the camera: a job cancelled has none; one that finished before the
    cancel holds a request (or is about to: picamera2 signals it just after its loop takes the lock off)."""
    try:
        request = cam.wait(job, timeout=CLOSE_TIMEOUT_S)
    except (futures.CancelledError, TimeoutError, futures.TimeoutError):  # the pair: see _items
        return
    except Exception:  # the job failed in picamera2's loop: nothing to give back
        log.debug("picamera2 capture job failed", exc_info=True)
        return
    request.release()


_warned: set[tuple[str, int, int, float | None]] = set()


def _warn_once(cfg: SourceConfig) -> None:
    """The main stream's cost on this Pi (a Pi 5 encodes in software), once a process, not at every reopen."""
    p = cfg.picamera2
    key = (p.model, p.width, p.height, cfg.fps)
    if key not in _warned:
        _warned.add(key)
        for note in picamera2_warnings(p.model, p.width, p.height, cfg.fps):
            log.warning("%s", note)
