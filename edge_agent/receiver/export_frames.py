"""One clip's pictures for the training set (a worker thread's job): decoded at the planned times, each with
its quality figures, near-duplicates left out, background pictures checked, JPEG-encoded.

Near-duplicates, the stated rule: a frame with codes is left out when the last frame kept from the same
clip shows the same codes (same categories and CIDs), none moved by more than NEAR_PX pixels, and its
picture differs from that frame's by less than NEAR_GREY grey levels on average (64x36 thumbnails): a
still scene gives one picture, a label moving across the view every analysed frame. Identical pictures
from different clips (two overlapping clips of one camera, the same footage delivered twice) are found
later by their JPEG's hash (export_state.py). A background picture is one the agent analysed and found
nothing in, nor in the analysed frames either side; before it is taken, zxing-cpp with every pass
(rotations, inverted, downscaled, errors returned) must find no QR symbol in the decoded picture either.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import numpy as np
import zxingcpp

from ..picture import exposure
from .export_plan import Box, Plan

JPEG_QUALITY = 92
NEAR_PX = 2.0
NEAR_GREY = 1.0
THUMB = (64, 36)
SPARES = 2  # background candidates decoded beyond a clip's share, to stand in for one that shows a code


class FrameError(Exception):
    """A planned frame cannot be exported (not in the video, a video that does not decode): its cause."""


@dataclass
class Picture:
    t: float
    frame_id: int  # the frame's number in the clip (its presentation time x the clip's rate)
    width: int
    height: int
    jpeg: bytes
    digest: str  # hash of the picture's JPEG: the same picture from another clip has the same one
    sharpness: float  # variance of the Laplacian of the whole frame's luma
    exposure: float  # mean luma, 0-255
    boxes: list[Box]  # scaled to this picture
    background: bool = False
    written: bool = False  # its JPEG is on disk already (export_state.write_pending)


@dataclass
class ClipPictures:
    pictures: list[Picture] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)


def decode_at(video: bytes, times: list[float]) -> Iterator[tuple[float, int, np.ndarray]]:
    """(wanted time, frame number, BGR picture) for each wanted clip time: the frame presented at it (within
    half a frame), as players show the clip (its edit list honoured). Decodes up to the last wanted time;
    raises FrameError naming the times the video has no frame for."""
    pending = sorted(set(times))
    if not pending:
        return
    missing: list[float] = []
    last = None
    try:
        with av.open(io.BytesIO(video)) as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            rate = float(v.average_rate or 30)
            half = 0.5 / rate
            for frame in c.decode(v):
                if frame.time is None:
                    continue
                last = frame.time
                while pending and pending[0] < frame.time - half:
                    missing.append(pending.pop(0))
                if pending and abs(pending[0] - frame.time) <= half:
                    picture = frame.to_ndarray(format="bgr24")
                    while pending and abs(pending[0] - frame.time) <= half:
                        yield pending.pop(0), round(frame.time * rate), picture
                if not pending:
                    break
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise FrameError(f"the video does not decode: {exc}") from None
    missing += pending
    if missing:
        shown = f"its last frame is at {last:.3f} s" if last is not None else "it has no frame"
        raise FrameError(f"no frame at clip time {', '.join(f'{t:.3f}' for t in missing[:5])} s"
                         f"{' and more' if len(missing) > 5 else ''} ({shown})")


def background_wanted(ratio: float, frames: int) -> int:
    """Background candidates a clip with `frames` planned pictures of codes offers: its share at the ratio,
    rounded up, and one more for a clip whose pictures are mostly identical to another's (the calling
    thread takes only what keeps the whole set at the ratio: export_state.py)."""
    return math.ceil(ratio * frames) + 1 if ratio > 0 and frames else 0


MIN_SYMBOL_PX = 16  # a QR code is 21 modules or more: a smaller outline is no located symbol


def has_code(gray: np.ndarray) -> bool:
    """Any QR symbol zxing-cpp finds with every pass, read or located (its errors reported without an
    outline, at 0,0, locate nothing)."""
    return any(r.valid or symbol_side(r) >= MIN_SYMBOL_PX
               for r in zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.QRCode, try_rotate=True,
                                               try_downscale=True, try_invert=True, return_errors=True))


def symbol_side(r: Any) -> float:
    """The longer side of a zxing-cpp result's outline's box, in pixels."""
    p = r.position
    xs = [p.top_left.x, p.top_right.x, p.bottom_left.x, p.bottom_right.x]
    ys = [p.top_left.y, p.top_right.y, p.bottom_left.y, p.bottom_right.y]
    return float(max(max(xs) - min(xs), max(ys) - min(ys)))


def pictures(video: bytes, plan: Plan, background_ratio: float) -> ClipPictures:
    """The clip's pictures as the plan wants them (raises FrameError)."""
    out = ClipPictures()
    quota = background_wanted(background_ratio, len(plan.frames))
    # the background candidates to try first, evenly spread; the others stand in for one that shows a code
    order = _spread(plan.background, quota)
    first_choice = set(order[:quota])
    owed = 0
    last_codes: tuple[list[Box], np.ndarray] | None = None
    last_empty: np.ndarray | None = None
    for t, frame_id, bgr in decode_at(video, [*plan.frames, *order[:quota + SPARES if quota else 0]]):
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        thumb = cv2.resize(gray, THUMB, interpolation=cv2.INTER_AREA).astype(np.int16)
        h, w = gray.shape
        if t in plan.frames:
            boxes = _scaled(plan.frames[t], plan.size, w, h)
            if last_codes is not None and _near(boxes, thumb, *last_codes):
                out.left_out["near-duplicate"] += 1
                continue
            last_codes = (boxes, thumb)
            out.pictures.append(_picture(t, frame_id, bgr, gray, boxes))
            continue
        if t not in first_choice and owed == 0:
            continue
        if has_code(gray):
            out.left_out["background with a code zxing-cpp finds"] += 1
            owed += t in first_choice
            continue
        if last_empty is not None and float(np.abs(thumb - last_empty).mean()) < NEAR_GREY:
            out.left_out["near-duplicate"] += 1
            owed += t in first_choice
            continue
        if t not in first_choice:
            owed -= 1
        last_empty = thumb
        out.pictures.append(_picture(t, frame_id, bgr, gray, [], background=True))
    return out


def _spread(times: list[float], k: int) -> list[float]:
    """All of the times, the k evenly spread ones first."""
    n = len(times)
    if k <= 0 or n == 0:
        return list(times)
    first = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)} if k > 1 and n > 1 else {n // 2})
    return [times[i] for i in first] + [t for i, t in enumerate(times) if i not in first]


def _scaled(boxes: list[Box], size: tuple[int, int], w: int, h: int) -> list[Box]:
    """Polygons from the source frame's pixels to the clip's (a clip resized by clip.width/height)."""
    sx, sy = (w / size[0] if size[0] else 1.0), (h / size[1] if size[1] else 1.0)
    if sx == sy == 1.0:
        return boxes
    return [Box(b.category, [[x * sx, y * sy] for x, y in b.polygon], b.cid, b.decoder, b.sharpness, b.source)
            for b in boxes]


def _near(boxes: list[Box], thumb: np.ndarray, kept: list[Box], kept_thumb: np.ndarray) -> bool:
    def key(b: Box) -> tuple[int, str]:
        return b.category, b.cid or ""

    if sorted(map(key, boxes)) != sorted(map(key, kept)):
        return False
    for b in boxes:
        if not any(key(k) == key(b) and _moved(b.polygon, k.polygon) <= NEAR_PX for k in kept):
            return False
    return float(np.abs(thumb - kept_thumb).mean()) < NEAR_GREY


def _moved(a: list[Any], b: list[Any]) -> float:
    xa, ya, xb, yb = [p[0] for p in a], [p[1] for p in a], [p[0] for p in b], [p[1] for p in b]
    return max(abs(min(xa) - min(xb)), abs(max(xa) - max(xb)), abs(min(ya) - min(yb)), abs(max(ya) - max(yb)))


def _picture(t: float, frame_id: int, bgr: np.ndarray, gray: np.ndarray, boxes: list[Box],
             background: bool = False) -> Picture:
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise FrameError(f"JPEG encoding failed at clip time {t:.3f} s")
    h, w = gray.shape
    data = jpeg.tobytes()
    # the encoder is deterministic: identical pictures give identical JPEGs, a sixth of the pixels to hash
    return Picture(t, frame_id, w, h, data, hashlib.blake2b(data, digest_size=16).hexdigest(),
                   round(frame_sharpness(gray), 1), round(exposure(gray)[0], 1), boxes, background)


def frame_sharpness(gray: np.ndarray) -> float:
    """The variance of the Laplacian, as `picture.sharpness` computes it for a code's box, over the whole
    frame: in 16-bit integers (an 8-bit picture's Laplacian fits) and OpenCV's own mean and deviation, a
    fifth of the float64 way's time on a 720p frame."""
    if not gray.size:
        return 0.0
    _, dev = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))
    return float(dev[0][0]) ** 2
