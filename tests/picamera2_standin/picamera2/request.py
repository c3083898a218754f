"""Stand-in for picamera2/request.py: `CompletedRequest` (a frame's buffers, reference-counted: it goes
back to the camera when the last holder releases it) and `MappedArray` (a stream's buffer as an array,
without a copy, inside a `with`).

As in picamera2 0.3.36:
- a request is made holding one reference; `acquire`/`release` count; at zero it is queued to the camera
  again only if the camera has not been stopped since it was made (`stop_count`), else it is let go;
- `MappedArray(request, stream, reshape=True, write=True)`: `write` picks the DMA-buf sync the mapping
  brackets itself with (DMA_BUF_SYNC_RW, or DMA_BUF_SYNC_READ with write=False: picamera2's DmaSync);
  `make_buffer` maps read-only and copies; `make_array` maps with the default (write=True) and copies.
- importing it imports `simplejpeg`, as picamera2/request.py does.

What a test can count (not picamera2's): `BUFFER_READS` (lores pictures read out of the camera's buffers,
mapped or copied), `BUFFER_SYNCS[(stream, write)]` (mappings by sync kind), `requests_held()` (requests
made and not yet released by every holder).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import simplejpeg  # noqa: F401 (picamera2 imports it here; its import is what fails on a numpy ABI mismatch)

__all__ = ["BUFFER_READS", "BUFFER_SYNCS", "CompletedRequest", "MappedArray", "requests_held"]

BUFFER_READS: dict[str, int] = {}
BUFFER_SYNCS: dict[tuple[str, bool], int] = {}
_held_lock = threading.Lock()
_held = 0


def requests_held() -> int:
    return _held


class CompletedRequest:
    def __init__(self, picam2: Any, buffers: dict[str, memoryview], metadata: dict, frame: int):
        global _held
        self.ref_count = 1
        self.lock = picam2.request_lock
        self.picam2 = picam2
        self.stop_count = picam2.stop_count
        self.configure_count = picam2.configure_count
        self.config = dict(picam2.camera_config)
        self.frame = frame  # which recorded frame this is (the stand-in's; the encoder reads it)
        self._buffers = buffers
        self._metadata = metadata
        with _held_lock:
            _held += 1

    def acquire(self) -> None:
        with self.lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        global _held
        with self.lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count > 0:
                return
            cam = self.picam2.camera
            if cam is not None and self.stop_count == self.picam2.stop_count and self.picam2.started:
                cam.queue_request()
            self._buffers = {}
            self.config = {}
        with _held_lock:
            _held -= 1

    def buffer(self, name: str) -> memoryview:
        if name not in self._buffers:
            raise RuntimeError("failed to find buffer")  # released, or a stream that is not configured
        return self._buffers[name]

    def get_metadata(self) -> dict:
        return dict(self._metadata)

    def make_buffer(self, name: str) -> np.ndarray:
        with MappedArray(self, name, reshape=False, write=False) as m:
            return np.array(m.array)

    def make_array(self, name: str) -> np.ndarray:
        with MappedArray(self, name) as m:
            return np.copy(m.array)


class MappedArray:
    def __init__(self, request: CompletedRequest, stream: str, reshape: bool = True, write: bool = True):
        self._request = request
        self._stream = stream
        self._reshape = reshape
        self._write = write
        self._array: np.ndarray | None = None

    def __enter__(self) -> MappedArray:
        array = np.frombuffer(self._request.buffer(self._stream), np.uint8)
        key = (self._stream, self._write)
        BUFFER_SYNCS[key] = BUFFER_SYNCS.get(key, 0) + 1
        BUFFER_READS[self._stream] = BUFFER_READS.get(self._stream, 0) + 1
        if self._reshape:
            cfg = self._request.config[self._stream]
            w, h = cfg["size"]
            if cfg["format"] not in ("YUV420", "YVU420"):
                raise RuntimeError("Format " + cfg["format"] + " not supported by the stand-in")
            array = array.reshape((h * 3 // 2, cfg["stride"]))  # picamera2's YUV420 shape
        self._array = array
        return self

    def __exit__(self, *exc: object) -> None:
        self._array = None

    @property
    def array(self) -> np.ndarray | None:
        return self._array
