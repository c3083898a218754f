"""Small real videos for tests: H.264 in MP4 (or other codecs), with QR codes shown at given times."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import zxingcpp

Box = tuple[int, int, int, int]


def write_gray_h264(path: Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: int) -> Path:
    """Gray pictures as H.264 (container from the suffix): a keyframe a second, no B-frames, fast."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = fps
        stream.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        _encode_gray(out, stream, frames)
    return path


def _encode_gray(out: av.container.OutputContainer, stream: av.video.stream.VideoStream,
                 frames: Iterable[np.ndarray]) -> None:
    """Gray pictures into `stream`, one a tick, the encoder drained at the end."""
    for n, img in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(img, format="gray").reformat(format=stream.pix_fmt)
        frame.pts = n
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)


def transcode(src: Path, dst: Path, codec: str) -> Path:
    """The same pictures at the same times in another codec (e.g. "mjpeg" into .mkv): a camera whose clips
    must be encoded, there being no H.264 to copy."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ins = inp.streams.video[0]
        stream = out.add_stream(codec, rate=ins.average_rate)
        stream.width, stream.height = ins.width, ins.height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        _encode_gray(out, stream, (decoded.to_ndarray(format="gray") for decoded in inp.decode(ins)))
    return dst


def symbol_box(q: np.ndarray) -> Box:
    """The dark modules' extent in a QR image (its quiet zone left out): where a decoder outlines it."""
    ys, xs = np.nonzero(q < 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


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
    codes: Sequence[tuple[str | bytes, float, float] | tuple[str | bytes, float, float, int]] = (),
    gop: int | None = None,
    codec: str = "libx264",
    fmt: str | None = None,
    bframes: int | None = None,
    scale: int = 5,
    speed_px_s: float = 40.0,
    labels: dict[int, list[tuple[str | bytes, Box]]] | None = None,
    open_gop: bool = False,
) -> Path:
    """Write a video where each (payload, t_from, t_to[, y]) code is in view over [t_from, t_to],
    moving right at `speed_px_s` (y: its top row, default 20). `labels`, when given, is filled with
    where each code was drawn: frame index -> [(payload, its symbol's box x0, y0, x1, y1)], the box
    in edge coordinates (x1 = the column after its last dark module). `open_gop` (x264 with B-frames): the
    B-frames shown just before a keyframe are coded after it, referencing the interval before."""
    w, h = size
    gop = gop or fps
    rng = np.random.default_rng(7)
    background = cv2.GaussianBlur((rng.random((h, w)) * 120 + 60).astype(np.uint8), (7, 7), 0)
    images = [(qr_image(c[0], scale), c[1], c[2], c[3] if len(c) > 3 else 20) for c in codes]
    symbols = [symbol_box(q) for q, *_ in images]

    def frames() -> Iterator[np.ndarray]:
        for i in range(round(seconds * fps)):
            t = i / fps
            img = np.roll(background, i * 3, axis=1).copy()
            cv2.putText(img, f"{t:05.2f}", (10, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
            for k, (q, a, b, y) in enumerate(images):
                if a <= t <= b:
                    x = min(w - q.shape[1], 20 + int((t - a) * speed_px_s) + k * (q.shape[1] + 10))
                    img[y : y + q.shape[0], x : x + q.shape[1]] = q
                    if labels is not None:
                        x0, y0, x1, y1 = symbols[k]
                        labels.setdefault(i, []).append((codes[k][0], (x + x0, y + y0, x + x1, y + y1)))
            yield img

    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "bf": str(bframes if bframes is not None else 0),
                                            **({"x264-params": "open-gop=1"} if open_gop else {})}
        _encode_gray(out, stream, frames())
    return path
