"""What the live view takes from the pipeline, at no cost while nobody watches.

- `ViewerSlot`: the detect stage offers its newest frame and what it found there, but only while a
  viewer asked in the last few seconds; the offer is a reference swap, never a wait, and pictures
  are made on the viewer's own thread (the HTTP request), not the detect thread.
- `Thumbnails`: a small JPEG of each recent event's first sighting, kept in memory, bounded.
- `ReadTally`: reads and no-reads over the last hour, for the read rate.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge_agent.capture.media import GrayFrame

# A viewer that has not asked for this long is gone: the detect stage stops offering frames.
VIEWER_TTL_S = 5.0
THUMB_MAX_PX = 160
THUMB_QUALITY = 70
THUMBS_KEPT = 32
TALLY_WINDOW_S = 3600.0
TALLY_MAX = 100_000  # a bound whatever the line speed


class ViewerSlot:
    """The newest (GrayFrame, DetectResult) for a viewer; `seq` tells a viewer whether it is new."""

    def __init__(self, ttl_s: float = VIEWER_TTL_S, monotonic: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self._monotonic = monotonic  # a test's clock makes "the viewer left" exact
        self._asked = -1e18
        self._lock = threading.Lock()
        self._item: tuple[GrayFrame, Any] | None = None
        self.seq = 0

    def want(self) -> None:
        """A viewer is looking: frames are offered for the next `ttl_s` seconds."""
        self._asked = self._monotonic()

    @property
    def wanted(self) -> bool:
        return self._monotonic() - self._asked < self.ttl_s

    def offer(self, frame: GrayFrame, result: Any) -> None:
        """Detect thread: one monotonic clock read when nobody watches."""
        if not self.wanted:
            if self._item is not None:
                self._item = None  # do not hold a decoder frame for nobody
            return
        with self._lock:
            self._item = (frame, result)
            self.seq += 1

    def latest(self) -> tuple[int, tuple[GrayFrame, Any] | None]:
        with self._lock:
            return self.seq, self._item


def thumbnail(gray: np.ndarray, polygon: Any, max_px: int = THUMB_MAX_PX) -> bytes:
    """The code and its surroundings (one code size each side), outlined, at most `max_px` a side."""
    h, w = gray.shape
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    size = max(max(xs) - min(xs), max(ys) - min(ys), 16)
    x0, y0 = max(0, min(xs) - size), max(0, min(ys) - size)
    x1, y1 = min(w, max(xs) + size), min(h, max(ys) + size)
    img = cv2.cvtColor(np.ascontiguousarray(gray[y0:y1, x0:x1]), cv2.COLOR_GRAY2BGR)
    pts = np.array([(x - x0, y - y0) for x, y in polygon], np.int32)
    cv2.polylines(img, [pts], True, (40, 200, 40), max(2, img.shape[1] // 60))
    scale = max_px / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, (max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    return jpeg.tobytes() if ok else b""


class Thumbnails:
    """event_id -> JPEG bytes, the newest `kept` only (a few KB each)."""

    def __init__(self, kept: int = THUMBS_KEPT):
        self.kept = kept
        self._lock = threading.Lock()
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def add(self, event_id: str, frame: GrayFrame, polygon: Any) -> None:
        try:
            jpeg = thumbnail(frame.gray, polygon)
        except (cv2.error, ValueError):  # a thumbnail is a nicety: never a reason to lose an event
            return
        with self._lock:
            self._items[event_id] = jpeg
            while len(self._items) > self.kept:
                self._items.popitem(last=False)

    def get(self, event_id: str) -> bytes | None:
        with self._lock:
            return self._items.get(event_id)


class ReadTally:
    """Wall times of reads (events) and no-reads over the last hour."""

    def __init__(self, window_s: float = TALLY_WINDOW_S):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._reads: deque[float] = deque(maxlen=TALLY_MAX)
        self._noreads: deque[float] = deque(maxlen=TALLY_MAX)

    def read(self, at: float | None = None) -> None:
        with self._lock:
            self._reads.append(time.time() if at is None else at)

    def noread(self, at: float | None = None) -> None:
        with self._lock:
            self._noreads.append(time.time() if at is None else at)

    def rates(self, now: float | None = None, minutes: tuple[int, ...] = (1, 10, 60)) -> dict[str, dict[str, Any]]:
        """{"1m": {"reads", "noreads", "rate"}, ...}; rate is the read share in %, None with nothing seen."""
        now = time.time() if now is None else now
        with self._lock:
            while self._reads and self._reads[0] < now - self.window_s:
                self._reads.popleft()
            while self._noreads and self._noreads[0] < now - self.window_s:
                self._noreads.popleft()
            reads, noreads = list(self._reads), list(self._noreads)
        out = {}
        for m in minutes:
            since = now - 60 * m
            r = sum(1 for x in reads if x >= since)
            n = sum(1 for x in noreads if x >= since)
            out[f"{m}m"] = {"reads": r, "noreads": n, "rate": round(100.0 * r / (r + n), 1) if r + n else None}
        return out
