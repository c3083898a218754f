"""What the stand-in plays instead of a sensor (not part of picamera2): a recorded camera.

- `PICAMERA2_STANDIN_VIDEO`: a raw H.264 (Annex-B) file without B-frames, recorded at the main stream's
  size, its SPS/PPS before every keyframe (what `H264Encoder(repeat=True)` writes). Its packets are what
  the encoder hands to `Output.outputframe`; the same file decoded and scaled to the lores size as YUV420
  with a 64-byte-aligned stride is the lores stream's buffer.
- The lores frames are decoded once into a cache file (`PICAMERA2_STANDIN_CACHE`, default the temp
  directory) and played from memory, as a camera's ISP hands over buffers without CPU work.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from pathlib import Path

import av
import numpy as np

__all__ = ["Recording", "lores_bytes", "prepare_lores", "stride"]


def stride(width: int) -> int:
    return (width + 63) // 64 * 64


def lores_bytes(size: tuple[int, int]) -> int:
    w, h = size
    return stride(w) * h * 3 // 2


def prepare_lores(video: str, size: tuple[int, int]) -> Path:
    """Decode `video` once into lores YUV420 frames (picamera2's layout: Y rows, then U, then V, each row
    `stride` bytes), cached by file and size."""
    st = os.stat(video)
    key = hashlib.sha1(f"{os.path.abspath(video)}:{st.st_mtime_ns}:{st.st_size}:{size}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("PICAMERA2_STANDIN_CACHE") or tempfile.gettempdir()) / f"picamera2-standin-{key}.yuv"
    if cache.exists():
        return cache
    w, h = size
    pitch_y = stride(w)
    tmp = cache.with_suffix(f".{os.getpid()}.part")
    with av.open(video) as src, open(tmp, "wb") as out:
        for frame in src.decode(video=0):
            f = frame.reformat(width=w, height=h, format="yuv420p")
            buf = np.zeros(lores_bytes(size), np.uint8)
            # Y: h rows of `stride` bytes; then U and V: h/2 rows of stride/2 bytes each
            layout = ((0, h, w, pitch_y), (pitch_y * h, h // 2, w // 2, pitch_y // 2),
                      (pitch_y * h + pitch_y * h // 4, h // 2, w // 2, pitch_y // 2))
            for plane, (at, rows, cols, pitch) in zip(f.planes, layout, strict=True):
                src_rows = np.frombuffer(plane, np.uint8).reshape(rows, plane.line_size)[:, :cols]
                buf[at:at + rows * pitch].reshape(rows, pitch)[:, :cols] = src_rows
            out.write(buf.tobytes())
    os.replace(tmp, cache)
    return cache


class Recording:
    """The recorded stream's packets, and its lores frames mapped from the cache once the size is known."""

    def __init__(self, video: str):
        self.video = video
        with av.open(video) as probe:
            s = probe.streams.video[0]
            self.size = (s.codec_context.width, s.codec_context.height)
        self._packets: list[tuple[bytes, bool]] | None = None
        self._lores: dict[tuple[int, int], mmap.mmap] = {}

    def packet(self, frame: int) -> tuple[bytes, bool]:
        """The encoder's output for the `frame`th frame since the camera started (the file loops)."""
        if self._packets is None:
            with av.open(self.video) as src:
                self._packets = [(bytes(p), bool(p.is_keyframe)) for p in src.demux(video=0) if p.size]
        return self._packets[frame % len(self._packets)]

    def lores(self, frame: int, size: tuple[int, int]) -> memoryview:
        """The lores buffer of the `frame`th frame, without a copy."""
        if size not in self._lores:
            with open(prepare_lores(self.video, size), "rb") as fh:  # the mapping outlives the descriptor
                self._lores[size] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        m, n = self._lores[size], lores_bytes(size)
        j = frame % (len(m) // n)
        return memoryview(m)[j * n:(j + 1) * n]
