"""A stand-in for picamera2 (Raspberry Pi OS's python3-picamera2), importable only by tests and
benchmarks that put tests/picamera2_standin on sys.path. It keeps picamera2's interface as its
source defines it, and plays a recorded camera instead of a sensor:

- `PICAMERA2_STANDIN_VIDEO`: a raw H.264 (Annex-B) file without B-frames, recorded at the main
  stream's size, its SPS/PPS before every keyframe (what `H264Encoder(repeat=True)` writes). Its
  packets are what the encoder hands to `Output.outputframe(frame, keyframe, timestamp, packet, audio)`,
  with `timestamp` in microseconds since the encoder's first frame; the same file decoded, scaled to
  the lores size as YUV420 with a 64-byte-aligned stride, is what `request.make_array("lores")` returns.
  The lores frames are decoded once into a cache file (`PICAMERA2_STANDIN_CACHE`, default the temp
  directory) and played from memory, as a camera's ISP hands over buffers without CPU work.
- Frames come at the configured `FrameRate` on a camera thread, stamped with `time.monotonic_ns()` as
  `SensorTimestamp`; the file loops, as a camera never ends. No video configured: `Picamera2()` fails
  as it does on a Pi with no camera.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import av
import numpy as np

from .encoders import Encoder

__all__ = ["Picamera2", "CompletedRequest", "MappedArray", "prepare_lores"]


def _stride(width: int) -> int:
    return (width + 63) // 64 * 64


def _lores_bytes(size: tuple[int, int]) -> int:
    w, h = size
    return _stride(w) * h * 3 // 2


def prepare_lores(video: str, size: tuple[int, int]) -> Path:
    """Decode `video` once into lores YUV420 frames (picamera2's layout: Y rows, then U, then V, each row
    `stride` bytes), cached by file and size."""
    st = os.stat(video)
    key = hashlib.sha1(f"{os.path.abspath(video)}:{st.st_mtime_ns}:{st.st_size}:{size}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("PICAMERA2_STANDIN_CACHE") or tempfile.gettempdir()) / f"picamera2-standin-{key}.yuv"
    if cache.exists():
        return cache
    w, h = size
    stride = _stride(w)
    tmp = cache.with_suffix(f".{os.getpid()}.part")
    with av.open(video) as src, open(tmp, "wb") as out:
        for frame in src.decode(video=0):
            f = frame.reformat(width=w, height=h, format="yuv420p")
            buf = np.zeros(_lores_bytes(size), np.uint8)
            # Y: h rows of `stride` bytes; then U and V: h/2 rows of stride/2 bytes each
            layout = ((0, h, w, stride), (stride * h, h // 2, w // 2, stride // 2),
                      (stride * h + stride * h // 4, h // 2, w // 2, stride // 2))
            for plane, (at, rows, cols, pitch) in zip(f.planes, layout, strict=True):
                src_rows = np.frombuffer(plane, np.uint8).reshape(rows, plane.line_size)[:, :cols]
                buf[at:at + rows * pitch].reshape(rows, pitch)[:, :cols] = src_rows
            out.write(buf.tobytes())
    os.replace(tmp, cache)
    return cache


class CompletedRequest:
    """One frame's buffers and metadata; hold it only until `release()`."""

    def __init__(self, picam2: Picamera2, buffers: dict[str, memoryview], metadata: dict):
        self.picam2 = picam2
        self._buffers = buffers
        self._metadata = metadata
        self._released = False
        self.config = picam2.camera_config

    def get_metadata(self) -> dict:
        return dict(self._metadata)

    def make_buffer(self, name: str) -> np.ndarray:
        if self._released:
            raise RuntimeError("request already released")
        BUFFER_READS[name] = BUFFER_READS.get(name, 0) + 1
        return np.frombuffer(self._buffers[name], np.uint8)

    def make_array(self, name: str) -> np.ndarray:
        """A copy of the stream's buffer as a 2-D array; YUV420 is (h*3/2, stride), as picamera2 returns it."""
        cfg = self.config[name]
        w, h = cfg["size"]
        if cfg["format"] not in ("YUV420", "YVU420"):
            raise RuntimeError("Format " + cfg["format"] + " not supported by the stand-in")
        return np.copy(self.make_buffer(name).reshape((h * 3 // 2, cfg["stride"])))

    def release(self) -> None:
        self._released = True
        self._buffers = {}


# Lores pictures read out of the camera's buffers (mapped or copied), by stream: what a test can count.
BUFFER_READS: dict[str, int] = {}


class MappedArray:
    """A request's stream buffer as a numpy array, without a copy, valid inside the `with` (picamera2's
    MappedArray: YUV420 reshaped to (h*3/2, stride), as make_array gives it)."""

    def __init__(self, request: CompletedRequest, stream: str, reshape: bool = True, write: bool = True):
        self._request = request
        self._stream = stream
        self._reshape = reshape
        self.array: np.ndarray | None = None

    def __enter__(self) -> MappedArray:
        array = self._request.make_buffer(self._stream)
        if self._reshape:
            cfg = self._request.config[self._stream]
            w, h = cfg["size"]
            if cfg["format"] not in ("YUV420", "YVU420"):
                raise RuntimeError("Format " + cfg["format"] + " not supported by the stand-in")
            array = array.reshape((h * 3 // 2, cfg["stride"]))
        self.array = array
        return self

    def __exit__(self, *exc: object) -> None:
        self.array = None


class _Job:
    def __init__(self) -> None:
        self._future: Future = Future()

    def get_result(self, timeout=None):
        return self._future.result(timeout=timeout)


class Picamera2:
    def __init__(self, camera_num: int = 0, tuning=None):
        video = os.environ.get("PICAMERA2_STANDIN_VIDEO")
        if not video or camera_num != 0:
            raise IndexError("list index out of range")  # what picamera2 raises with no camera attached
        self._video = video
        with av.open(video) as probe:
            s = probe.streams.video[0]
            self.sensor_resolution = (s.codec_context.width, s.codec_context.height)
        self.camera_config: dict | None = None
        self._encoder: Encoder | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._latest: CompletedRequest | None = None
        self.frames_played = 0

    # --- configuration -------------------------------------------------------------------------

    def create_video_configuration(self, main=None, lores=None, raw=None, transform=None, colour_space=None,
                                   buffer_count=6, controls=None, display="main", encode="main", queue=True,
                                   sensor=None, use_case="video"):
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        controls = controls or {}
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"], **lores}
        return {"use_case": use_case, "buffer_count": buffer_count, "main": main, "lores": lores,
                "controls": {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333), **controls},
                "display": display, "encode": encode}

    def configure(self, camera_config) -> None:
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camera_config.items()}
        main, lores = cfg["main"], cfg.get("lores")
        if tuple(main["size"]) != self.sensor_resolution:
            raise RuntimeError(f"stand-in: the recording is {self.sensor_resolution}, main asks {main['size']}")
        main["stride"] = _stride(main["size"][0])
        if lores is not None:
            if lores["format"] not in ("YUV420", "YVU420"):
                raise RuntimeError("lores stream must be YUV")
            if lores["size"][0] > main["size"][0] or lores["size"][1] > main["size"][1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            lores["stride"] = _stride(lores["size"][0])
        self.camera_config = cfg

    def camera_configuration(self) -> dict:
        return self.camera_config

    def stream_configuration(self, name="main") -> dict:
        return self.camera_config[name]

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        fps = float(self.camera_config["controls"].get("FrameRate", 30.0))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(fps,), daemon=True, name="standin-camera")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def start_encoder(self, encoder=None, output=None, pts=None, quality=None, name=None) -> None:
        if output is not None:
            encoder.output = output
        encoder.size = tuple(self.camera_config["main"]["size"])
        encoder.format = self.camera_config["main"]["format"]
        encoder.start(quality)
        self._encoder = encoder

    def stop_encoder(self, encoders=None) -> None:
        if self._encoder is not None:
            self._encoder.stop()
            self._encoder = None

    def start_recording(self, encoder, output, pts=None, config=None, quality=None, name=None) -> None:
        if config is not None:
            self.configure(config)
        self.start_encoder(encoder, output, pts=pts, quality=quality, name=name)
        self.start()

    def stop_recording(self) -> None:
        self.stop()
        self.stop_encoder()

    def close(self) -> None:
        self.stop()

    def capture_request(self, wait=None, signal_function=None, flush=None):
        job = _Job()
        with self._lock:
            latest, self._latest = self._latest, None
            if latest is None:
                self._jobs.append(job)
        if latest is not None:
            job._future.set_result(latest)
        if wait is None:
            wait = signal_function is None
        return job.get_result() if wait else job

    def wait(self, job, timeout=None):
        return job.get_result(timeout=timeout)

    # --- the camera thread ---------------------------------------------------------------------

    def _run(self, fps: float) -> None:
        lores_cfg = self.camera_config.get("lores")
        lores = None
        if lores_cfg is not None:
            size = tuple(lores_cfg["size"])
            with open(prepare_lores(self._video, size), "rb") as fh:  # the mapping outlives the descriptor
                lores = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            n_lores = len(lores) // _lores_bytes(size)
        with av.open(self._video) as src:
            packets = [(bytes(p), bool(p.is_keyframe)) for p in src.demux(video=0) if p.size]
        period_ns = int(1e9 / fps)
        next_ns = time.monotonic_ns()
        i = 0
        while not self._stop.is_set():
            delay = (next_ns - time.monotonic_ns()) / 1e9
            if delay > 0 and self._stop.wait(delay):
                break
            sensor_ns = next_ns
            next_ns += period_ns
            k = i % len(packets)
            enc = self._encoder
            if enc is not None and enc.running:
                data, key = packets[k]
                enc.outputframe(data, key, enc._timestamp(sensor_ns))
            buffers = {}
            if lores is not None:
                size_b = _lores_bytes(tuple(lores_cfg["size"]))
                j = k % n_lores
                buffers["lores"] = memoryview(lores)[j * size_b:(j + 1) * size_b]
            self._complete(CompletedRequest(self, buffers, {"SensorTimestamp": sensor_ns,
                                                            "FrameDuration": period_ns // 1000}))
            i += 1
            self.frames_played = i

    def _complete(self, request: CompletedRequest) -> None:
        """The next waiting capture_request gets it; with none waiting, only the newest is kept."""
        with self._lock:
            job = self._jobs.pop(0) if self._jobs else None
            if job is None:
                self._latest = request
                return
        job._future.set_result(request)
