"""Where each code was, analysed frame by analysed frame: the sightings behind a clip's track and its
quality figures (`metadata.detection.track`, `.track_frames` and `.quality`, delivery/contract.py).

A track is a sample of whole frames, so a training set can take any of them as fully labelled: each
frame in it keeps every code read there (whatever the CID), the outline of every code whose payload
the CID rule refused (never the payload) and every symbol located but not read. Frames are thinned
evenly to the contract's bounds, never the codes within a frame. Analysed frames in which nothing
was found, nor in the analysed frames either side, are listed as pictures without a code.

The detect thread records every analysed frame here (`frame()`); the clip thread asks for the
sightings in a finished clip's time span (`track()`): the ring hands a recording over once detection
has analysed past its end, so the span is whole when asked for. One lock guards the log; each side
only calls its methods. Bounded: `keep_s` of capture time and at most MAX_FRAMES frames with something
in them.

The picture figures (pixels per module, sharpness, exposure) come from `edge_agent.inspection`, the
code the live view and `snapshot` use, computed only on frames in which a CID was read (~2 ms a
1080p frame for the exposure, the code boxes far less).
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from edge_agent.capture.media import GrayFrame
from edge_agent.delivery import contract
from edge_agent.picture import code_figures, exposure
from edge_agent.pipeline.qr_detector import Detection, Unread

Polygon = tuple[tuple[int, int], ...]

MAX_FRAMES = 4096  # frames with a read or an unread symbol, whatever keep_s says
MAX_ANALYSED = 8192  # times of analysed frames (for "the frame before"), ~68 s at the highest rate
T = TypeVar("T")
EPS = 1e-6  # frame times are compared on the capture clock they share with the packets


@dataclass(frozen=True, slots=True)
class Seen:
    cid: str
    polygon: Polygon
    decoder: str
    px_per_module: float | None
    sharpness: float


@dataclass(frozen=True, slots=True)
class FrameSeen:
    t: float
    reads: tuple[Seen, ...]
    rejected: tuple[Polygon, ...]  # codes read whose payload the CID rule refused: the outline only
    unread: tuple[Polygon, ...]
    exposure: tuple[float, float, float] | None  # (mean, dark, bright) when something was read

    @property
    def entries(self) -> int:
        return len(self.reads) + len(self.rejected) + len(self.unread)


class SightingLog:
    def __init__(self, keep_s: float):
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._frames: deque[FrameSeen] = deque(maxlen=MAX_FRAMES)
        self._analysed: deque[float] = deque(maxlen=MAX_ANALYSED)
        self._newest = -math.inf

    def retain(self, keep_s: float) -> None:
        """Live reload of the rolls: frames are kept `keep_s` from the next frame on."""
        with self._lock:
            self.keep_s = keep_s

    # --- the detect thread ------------------------------------------------------------------------

    def frame(self, frame: GrayFrame, reads: Sequence[tuple[str | None, Detection]],
              unread: Sequence[Unread]) -> None:
        """One analysed frame: each code read with its CID (None: the CID rule refused its payload, of
        which only the outline is kept) and the symbols located but not read."""
        entry = None
        if reads or unread:
            seen, rejected = [], []
            for cid, det in reads:
                if cid is None:
                    rejected.append(det.polygon)
                    continue
                ppm, sharp = code_figures(frame.gray, det.polygon, det.modules)
                seen.append(Seen(cid, det.polygon, det.decoder, ppm, sharp))
            entry = FrameSeen(frame.t, tuple(seen), tuple(rejected), tuple(u.polygon for u in unread),
                              exposure(frame.gray) if seen else None)
        with self._lock:
            if frame.t < self._newest - self.keep_s:  # a new session's clock: the old frames mean nothing now
                self._frames.clear()
                self._analysed.clear()
            self._newest = frame.t
            self._analysed.append(frame.t)
            if entry is not None:
                self._frames.append(entry)
            while self._frames and self._frames[0].t < frame.t - self.keep_s:
                self._frames.popleft()
            while self._analysed and self._analysed[0] < frame.t - self.keep_s:
                self._analysed.popleft()

    # --- the clip thread --------------------------------------------------------------------------

    def track(self, cid: str, first: Detection, start_t: float, end_t: float, clip_start_t: float | None
              ) -> tuple[list[contract.TrackedCode] | None, contract.TrackFrames | None, contract.Quality | None]:
        """The track of the clip showing [start_t, end_t) of capture time, times counted from
        `clip_start_t` (None: no clip, no track), its frames, and the quality figures of `cid`'s sightings."""
        with self._lock:
            frames = [f for f in self._frames if start_t - EPS <= f.t < end_t - EPS]
            busy = {f.t for f in self._frames}
            analysed = list(self._analysed)
            before = [a for a in analysed if a < first.t - EPS]
            prev = next((f for f in self._frames if abs(f.t - before[-1]) < EPS), None) if before else None
        own = [(f.t, s) for f in frames for s in f.reads if s.cid == cid]
        quality = _quality(own, {f.t: f.exposure for f in frames}, _read_first(first, prev)) if own else None
        if clip_start_t is None:
            return None, None, quality
        kept = _whole_frames(frames, own[0][0] if own else None)
        read_in = Counter(s.cid for f in frames for s in f.reads)
        by_cid: dict[str, list[tuple[float, Seen]]] = {}
        for f in kept:
            for s in f.reads:
                by_cid.setdefault(s.cid, []).append((f.t, s))
        order = sorted(by_cid, key=lambda c: (c != cid, by_cid[c][0][0]))  # the event's own first, then as they came
        codes = [_tracked(c, by_cid[c], read_in[c], clip_start_t) for c in order]

        def at(t: float) -> float:
            return round(t - clip_start_t, 3)

        symbols = [contract.TrackSymbol(t=at(f.t), polygon=list(p), kind=kind) for f in kept
                   for kind, polys in (("rejected", f.rejected), ("unread", f.unread)) for p in polys]
        in_span = [i for i, a in enumerate(analysed) if start_t - EPS <= a < end_t - EPS]
        empty = [analysed[i] for i in in_span
                 if not any(analysed[j] in busy for j in (i - 1, i, i + 1) if 0 <= j < len(analysed))]
        return codes, contract.TrackFrames(
            times=[at(f.t) for f in kept], symbols=symbols,
            empty=[at(t) for t in _evenly(empty, contract.MAX_TRACK_EMPTY)], analysed=len(in_span),
            thinned_from=len(frames) if len(kept) < len(frames) else None), quality


def _evenly(items: Sequence[T], k: int) -> list[T]:
    """k of the items, evenly spread, the first and the last kept (all of them when there are no more)."""
    n = len(items)
    if n <= k:
        return list(items)
    if k <= 1:
        return items[:k]
    return [items[round(i * (n - 1) / (k - 1))] for i in range(k)]


def _whole_frames(frames: list[FrameSeen], own_first_t: float | None) -> list[FrameSeen]:
    """The most frames, evenly spread and always with the own code's first read, whose codes and symbols
    fit the track's bounds; each frame is kept whole or not at all."""
    n = len(frames)
    must = {i for i, f in enumerate(frames) if f.t == own_first_t}
    for k in range(min(n, contract.MAX_TRACK_FRAMES), 0, -1):
        picked = sorted(set(_evenly(range(n), k)) | must)
        if len(picked) <= contract.MAX_TRACK_FRAMES and _fits([frames[i] for i in picked]):
            return [frames[i] for i in picked]
    alone = [frames[i] for i in must]  # a frame crowded past the bounds on its own: the track has none
    return alone if alone and _fits(alone) else []


def _fits(frames: list[FrameSeen]) -> bool:
    return (sum(f.entries for f in frames) <= contract.MAX_TRACK_ENTRIES
            and len({s.cid for f in frames for s in f.reads}) <= contract.MAX_TRACK_CIDS)


def _tracked(cid: str, seen: list[tuple[float, Seen]], read_in: int, clip_start_t: float) -> contract.TrackedCode:
    return contract.TrackedCode(
        cid=cid, thinned_from=read_in if read_in > len(seen) else None,
        sightings=[contract.Sighting(t=round(t - clip_start_t, 3), polygon=list(s.polygon), decoder=s.decoder,
                                     sharpness=round(s.sharpness, 1)) for t, s in seen])


def _read_first(first: Detection, prev: FrameSeen | None) -> bool:
    """False when the analysed frame just before the first read located a symbol near where the code
    was then read (within two code widths: the label moves between analysed frames) and nothing read it."""
    if prev is None or not prev.unread:
        return True
    cx, cy, side = _centre(first.polygon)
    for poly in prev.unread:
        ux, uy, _ = _centre(poly)
        if math.hypot(ux - cx, uy - cy) <= 2 * side:
            return False
    return True


def _centre(poly: Polygon) -> tuple[float, float, float]:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return sum(xs) / len(xs), sum(ys) / len(ys), max(max(xs) - min(xs), max(ys) - min(ys), 1)


def _quality(own: list[tuple[float, Seen]], exposures: dict[float, tuple[float, float, float] | None],
             read_first: bool) -> contract.Quality:
    sharp = [s.sharpness for _, s in own]
    ppm = [s.px_per_module for _, s in own if s.px_per_module is not None]
    exp = [e for t, _ in own if (e := exposures.get(t)) is not None]
    means = [e[0] for e in exp]
    return contract.Quality(
        frames=len(own), sharpness_median=round(statistics.median(sharp), 1), sharpness_min=round(min(sharp), 1),
        exposure_median=round(statistics.median(means), 1) if means else None,
        exposure_worst=round(max(means, key=lambda m: abs(m - 128)), 1) if means else None,
        clipped_bright_max=round(max(e[2] for e in exp), 4) if exp else None,
        px_per_module=round(statistics.median(ppm), 2) if ppm else None, read_first_seen=read_first)
