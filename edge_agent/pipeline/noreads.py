"""No-reads: QR symbols the detector located but no decoder could read, kept as evidence.

Industrial code readers call this no-read image buffering: when a label goes by unread, the
operator wants to see it (torn, smeared, out of focus, glare) rather than learn of it from a
missing delivery. Two parts with one job each:

- `NoReadTracker` follows located symbols from frame to frame and decides. A symbol is a no-read
  when it was seen unread and no code was read near it within the cooldown: sightings are chained
  into tracks (a label moving on a belt stays one track; one not located for a few analysed frames
  has left), a read anywhere on a track within the cooldown clears it, and a track unread for
  `cooldown_s` is reported once, with its best view.
- `NoReadStore` keeps those views as JPEG files (the crop with the symbol's outline drawn) and a
  JSON sidecar each, in a folder bounded in count and bytes: the oldest go first.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.capture.media import GrayFrame
from edge_agent.config import Config
from edge_agent.metrics import Metrics
from edge_agent.pipeline.qr_detector import DetectResult, Polygon

log = logging.getLogger(__name__)

# A sighting joins a track whose last sighting lies within this many symbol sizes (centre to centre):
# a label on a belt moves well under one symbol size between two analysed frames.
NEAR_SIZES = 2.0
# ... and was seen at most this many analysed frames before: a symbol not located for longer has left
# (the next label on a line often turns up in the same spot a moment later, and must not clear it).
MAX_MISSED_FRAMES = 2
# Tracks followed at once; past this the one seen longest ago is decided early (bounded memory).
MAX_TRACKS = 64
# Context kept around the symbol in the saved view, as a fraction of its size on each side.
CROP_MARGIN = 0.5
JPEG_QUALITY = 85


@dataclass
class NoRead:
    """One unreadable symbol: where and when it was seen, and the view kept of it."""

    t: float  # video time of the kept view
    wall: float
    polygon: Polygon  # full-frame pixel coordinates
    error: str
    frame_width: int
    frame_height: int
    image: np.ndarray = field(repr=False)  # grey crop around the symbol
    origin: tuple[int, int] = (0, 0)  # the crop's top-left corner in the frame
    sightings: int = 1


def _centre_size(poly: Polygon) -> tuple[float, float, float]:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(max(xs) - min(xs), max(ys) - min(ys), 1)


@dataclass
class _Track:
    x: float
    y: float
    size: float
    last_t: float
    last_frame: int
    read_t: float | None = None
    unread_since: float | None = None  # first unread sighting with no read since
    sightings: int = 0
    best: NoRead | None = None
    best_area: float = -1.0
    reported: bool = False


class NoReadTracker:
    """Decides no-reads from the detector's results; confined to the detect thread."""

    def __init__(self, cooldown_s: float, max_tracks: int = MAX_TRACKS):
        self.cooldown_s = cooldown_s
        self.max_tracks = max_tracks
        self._tracks: list[_Track] = []
        self._frame_no = 0

    @property
    def pending(self) -> bool:
        """Tracks are being followed (a frame with only reads still matters to them)."""
        return bool(self._tracks)

    def observe(self, frame: GrayFrame, result: DetectResult) -> list[NoRead]:
        """Take one analysed frame; return the no-reads decided by it (usually none)."""
        t = result.t
        self._frame_no += 1
        for det in result.reads:
            tr = self._track(det.polygon, t)
            tr.read_t = t
            tr.unread_since = None  # everything unread on this track so far had a read within the cooldown
            tr.best, tr.best_area = None, -1.0
        for u in result.unread:
            tr = self._track(u.polygon, t)
            if tr.reported or (tr.read_t is not None and t - tr.read_t <= self.cooldown_s):
                continue
            if tr.unread_since is None:
                tr.unread_since = t
            tr.sightings += 1
            area = abs(cv2.contourArea(np.array(u.polygon, np.float32)))
            if area > tr.best_area:  # the largest view is the most useful to a person
                tr.best = _view(frame, u.polygon, u.error, result)
                tr.best_area = area
        return self._decide(t)

    def flush(self) -> list[NoRead]:
        """End of the video: nothing more can read the symbols still pending."""
        out = [self._report(tr) for tr in self._tracks if tr.unread_since is not None and not tr.reported]
        self._tracks.clear()
        return [nr for nr in out if nr is not None]

    def _track(self, poly: Polygon, t: float) -> _Track:
        x, y, size = _centre_size(poly)
        best, best_d = None, float("inf")
        for tr in self._tracks:
            d = ((tr.x - x) ** 2 + (tr.y - y) ** 2) ** 0.5
            if (d <= NEAR_SIZES * max(size, tr.size) and d < best_d and t - tr.last_t <= self.cooldown_s
                    and self._frame_no - tr.last_frame <= MAX_MISSED_FRAMES + 1):
                best, best_d = tr, d
        if best is None:
            best = _Track(x, y, size, t, self._frame_no)
            self._tracks.append(best)
        best.x, best.y, best.size, best.last_t, best.last_frame = x, y, size, t, self._frame_no
        return best

    def _decide(self, now: float) -> list[NoRead]:
        out: list[NoRead] = []
        keep: list[_Track] = []
        for tr in self._tracks:
            if tr.unread_since is not None and not tr.reported and now - tr.unread_since >= self.cooldown_s:
                nr = self._report(tr)
                if nr is not None:
                    out.append(nr)
            if now - tr.last_t <= self.cooldown_s or (tr.unread_since is not None and not tr.reported):
                keep.append(tr)
        while len(keep) > self.max_tracks:  # bounded: the track seen longest ago is decided now
            old = min(keep, key=lambda tr: tr.last_t)
            keep.remove(old)
            if old.unread_since is not None and not old.reported:
                nr = self._report(old)
                if nr is not None:
                    out.append(nr)
        self._tracks = keep
        return out

    @staticmethod
    def _report(tr: _Track) -> NoRead | None:
        tr.reported = True
        tr.unread_since = None
        nr, tr.best = tr.best, None
        if nr is not None:
            nr.sightings = tr.sightings
        return nr


def _view(frame: GrayFrame, poly: Polygon, error: str, result: DetectResult) -> NoRead:
    """A copy of the frame around the symbol (never a reference to the decoder's frame buffer)."""
    h, w = frame.gray.shape
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    size = max(max(xs) - min(xs), max(ys) - min(ys), 8)
    m = int(size * CROP_MARGIN)
    x0, y0 = max(0, min(xs) - m), max(0, min(ys) - m)
    x1, y1 = min(w, max(xs) + m), min(h, max(ys) + m)
    crop = np.array(frame.gray[y0:y1, x0:x1], copy=True)
    return NoRead(result.t, result.wall, poly, error, result.frame_width, result.frame_height, crop, (x0, y0))


@dataclass(frozen=True)
class NoReadEntry:
    """One kept no-read, as listed by the store."""

    image: str  # path of the JPEG
    t: float
    wall: float
    polygon: list[list[int]]
    error: str
    frame_width: int
    frame_height: int
    sightings: int
    size_bytes: int

    @property
    def at(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at}


class NoReadStore:
    """A folder of no-read views, bounded in count and bytes (the oldest dropped first). Made on the
    first save, so a reader that never misses a code leaves no trace on disk."""

    def __init__(self, folder: str | Path, max_files: int, max_bytes: int):
        self.folder = Path(folder)
        self.max_files = max_files
        self.max_bytes = max_bytes

    def save(self, nr: NoRead) -> NoReadEntry | None:
        """Write one view; None when the store keeps none (max_files 0) or the disk refuses (logged)."""
        if self.max_files <= 0 or self.max_bytes <= 0:
            return None
        img = cv2.cvtColor(nr.image, cv2.COLOR_GRAY2BGR)
        pts = np.array([(x - nr.origin[0], y - nr.origin[1]) for x, y in nr.polygon], np.int32)
        cv2.polylines(img, [pts], True, (0, 0, 255), max(2, min(img.shape[:2]) // 120))
        ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        stem = f"noread-{int(nr.wall * 1000):013d}-{uuid.uuid4().hex[:8]}"
        image = self.folder / f"{stem}.jpg"
        meta = {"t": round(nr.t, 3), "wall": round(nr.wall, 3), "polygon": [list(p) for p in nr.polygon],
                "error": nr.error, "frame_width": nr.frame_width, "frame_height": nr.frame_height,
                "sightings": nr.sightings}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(image, jpeg.tobytes())
            _write_atomic(image.with_suffix(".json"), json.dumps(meta).encode())
        except OSError as exc:
            log.warning("no-read image not kept folder=%s error=%s", self.folder, exc)
            return None
        self._bound()
        return NoReadEntry(str(image), meta["t"], meta["wall"], meta["polygon"], nr.error, nr.frame_width,
                           nr.frame_height, nr.sightings, len(jpeg))

    def entries(self) -> list[NoReadEntry]:
        """Oldest first. Files half-written or edited by hand are skipped, not fatal."""
        out = []
        for image in self._images():
            try:
                meta = json.loads(image.with_suffix(".json").read_text(encoding="utf-8"))
                out.append(NoReadEntry(str(image), float(meta["t"]), float(meta["wall"]), meta["polygon"],
                                       str(meta["error"]), int(meta["frame_width"]), int(meta["frame_height"]),
                                       int(meta.get("sightings", 1)), image.stat().st_size))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def clear(self) -> int:
        """Remove every kept view; the number removed."""
        n = 0
        for image in self._images():
            image.unlink(missing_ok=True)
            image.with_suffix(".json").unlink(missing_ok=True)
            n += 1
        return n

    def _images(self) -> list[Path]:
        try:
            return sorted(self.folder.glob("noread-*.jpg"))  # names start with the time: oldest first
        except OSError:
            return []

    def _bound(self) -> None:
        images = self._images()
        sizes = []
        for image in images:
            try:
                sizes.append(image.stat().st_size + image.with_suffix(".json").stat().st_size)
            except OSError:
                sizes.append(0)
        total = sum(sizes)
        i = 0
        while i < len(images) and (len(images) - i > self.max_files or total > self.max_bytes):
            images[i].unlink(missing_ok=True)
            images[i].with_suffix(".json").unlink(missing_ok=True)
            total -= sizes[i]
            i += 1


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def noreads_dir(cfg: Config) -> Path:
    """`noreads.dir`, else a `noreads` folder beside the spool (both in the state directory)."""
    if cfg.noreads.dir:
        return Path(cfg.noreads.dir)
    return Path(cfg.spool.dir).parent / "noreads"


def store_for(cfg: Config) -> NoReadStore:
    return NoReadStore(noreads_dir(cfg), cfg.noreads.max_files, cfg.noreads.max_bytes)


class NoReads:
    """The detect stage's one handle on no-reads: decide, count, keep the view, log, tell a listener
    (the replay report). Keeps the stage's own change to two calls."""

    def __init__(self, cfg: Config, metrics: Metrics, on_noread: Callable[[NoReadEntry | NoRead], None] | None = None):
        self.tracker = NoReadTracker(cfg.detector.cooldown_s)
        self.store = store_for(cfg)
        self.metrics = metrics
        self.on_noread = on_noread

    def configure(self, cfg: Config) -> None:
        """Live reload: the cooldown and the folder's bounds (the folder itself is restart-only)."""
        self.tracker.cooldown_s = cfg.detector.cooldown_s
        self.store.max_files, self.store.max_bytes = cfg.noreads.max_files, cfg.noreads.max_bytes

    def observe(self, frame: GrayFrame, result: DetectResult) -> None:
        # reads matter too: one just before or after an unread sighting clears it; a frame with nothing
        # still matters while tracks are followed (it is how their time runs out)
        if result.reads or result.unread or self.tracker.pending:
            self._emit(self.tracker.observe(frame, result))

    def flush(self) -> None:
        self._emit(self.tracker.flush())

    def _emit(self, found: list[NoRead]) -> None:
        for nr in found:
            self.metrics.noreads.inc()
            entry = self.store.save(nr)
            xs, ys = [p[0] for p in nr.polygon], [p[1] for p in nr.polygon]
            log.warning("no-read: QR code seen but not read t=%.3f at=%d,%d error=%s sightings=%d image=%s", nr.t,
                        (min(xs) + max(xs)) // 2, (min(ys) + max(ys)) // 2, nr.error, nr.sightings,
                        entry.image if entry else "-")
            if self.on_noread is not None:
                self.on_noread(entry or nr)
