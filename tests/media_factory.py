"""Small real videos for tests: H.264 in MP4 (or other codecs), with QR codes shown at given times."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import zxingcpp


def qr_image(payload: str | bytes, scale: int = 6) -> np.ndarray:
    """A QR code with its quiet zone, as a grayscale array."""
    bc = zxingcpp.create_barcode(payload, zxingcpp.BarcodeFormat.QRCode)
    return np.array(bc.to_image(scale=scale))


def make_video(
    path: Path,
    *,
    seconds: float = 6.0,
    fps: int = 30,
    size: tuple[int, int] = (640, 360),
    codes: Sequence[tuple[str | bytes, float, float]] = (),
    gop: int | None = None,
    codec: str = "libx264",
    fmt: str | None = None,
    bframes: int | None = None,
    scale: int = 5,
) -> Path:
    """Write a video where each (payload, t_from, t_to) code is in view over [t_from, t_to]."""
    w, h = size
    gop = gop or fps
    rng = np.random.default_rng(7)
    background = cv2.GaussianBlur((rng.random((h, w)) * 120 + 60).astype(np.uint8), (7, 7), 0)
    images = [(qr_image(p, scale), a, b) for p, a, b in codes]
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "bf": str(bframes if bframes is not None else 0)}
        for i in range(round(seconds * fps)):
            t = i / fps
            img = np.roll(background, i * 3, axis=1).copy()
            cv2.putText(img, f"{t:05.2f}", (10, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
            for k, (q, a, b) in enumerate(images):
                if a <= t <= b:
                    x = min(w - q.shape[1], 20 + int((t - a) * 40) + k * (q.shape[1] + 10))
                    y = 20
                    img[y : y + q.shape[0], x : x + q.shape[1]] = q
            frame = av.VideoFrame.from_ndarray(img, format="gray").reformat(format=stream.pix_fmt)
            frame.pts = i
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return path
