"""A conveyor of labels at a steady rate, several in view at once: H.264 MP4 for `pipe` sources
(tests/stream_sample.py) and replay. Label i (`CID-L0001`, ...) is in view from `first_s + i / per_s`
for `in_view_s`, in its own column (i modulo the columns), so labels in view together never overlap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from tests.media_factory import qr_image, write_gray_h264


def cid(i: int) -> str:
    return f"CID-L{i:04d}"


def label_times(seconds: float, per_s: float, first_s: float = 1.0, in_view_s: float = 0.6) -> list[float]:
    """When each label comes into view (those fully shown before the video ends)."""
    n = int((seconds - first_s - in_view_s) * per_s) + 1
    return [first_s + i / per_s for i in range(max(0, n))]


def make_label_video(path: Path, *, seconds: float, per_s: float, first_s: float = 1.0, in_view_s: float = 0.6,
                     fps: int = 30, size: tuple[int, int] = (640, 360), scale: int = 4) -> Path:
    w, h = size
    times = label_times(seconds, per_s, first_s, in_view_s)
    side = qr_image(cid(0), scale).shape[0]
    columns = max(1, (w - 10) // (side + 10))
    rng = np.random.default_rng(3)
    background = cv2.GaussianBlur((rng.random((h, w)) * 120 + 60).astype(np.uint8), (7, 7), 0)
    images: dict[int, np.ndarray] = {}
    def frames() -> Iterator[np.ndarray]:
        for n in range(round(seconds * fps)):
            t = n / fps
            img = np.roll(background, n * 3, axis=1).copy()
            cv2.putText(img, f"{t:05.2f}", (10, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
            for i, a in enumerate(times):
                if a <= t <= a + in_view_s:
                    q = images.setdefault(i, qr_image(cid(i), scale))
                    x = 10 + (i % columns) * (side + 10)
                    y = 20 + int((t - a) * 60)
                    img[y:y + side, x:x + side] = q
            yield img

    return write_gray_h264(path, frames(), size, fps)
