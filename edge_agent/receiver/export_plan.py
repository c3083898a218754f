"""Which frames of an LDO's clip a training set may take, with every box each one needs, from its metadata
alone (nothing decoded yet).

A frame is exported only when every code the agent saw in it is known, so no visible code is taught as
background:

- `detection.track_frames` (agents that send whole frames): each of its times holds every code read
  there (`track`, any CID) and every other symbol located there (`track_frames.symbols`: a payload the
  CID rule refused, a no-read). Labels `whole`. Its `empty` times are candidate background pictures.
- a track without `track_frames` (older agents thinned each CID on its own): a time is taken only when
  every CID whose sightings span it has a sighting there; the others are left out, counted. Labels
  `codes` (refused payloads and no-reads were not sent: they may be in the picture unboxed).
- no track (older still): the first sighting's one polygon at `detected_at`, labels `first_sighting`.

`--min-sharpness` leaves out whole frames (one with a code read below it, or with no figure: a frame of
only refused or unread symbols), never a box from a frame that is kept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CODE, REJECTED, UNREAD = 1, 2, 3
CATEGORIES = {CODE: "qr_code", REJECTED: "qr_code_rejected", UNREAD: "qr_code_unread"}
KIND_CATEGORY = {"rejected": REJECTED, "unread": UNREAD}


@dataclass(frozen=True)
class Box:
    category: int
    polygon: list[list[float]]  # source-frame pixels, as the agent sent it
    cid: str | None = None
    decoder: str | None = None
    sharpness: float | None = None
    source: str = "track"  # track | first_sighting


@dataclass
class Plan:
    """What to take from one clip: frames with their boxes (clip seconds -> boxes), background
    candidates in the order to try them, and why frames were left out."""

    labels: str  # whole | codes | first_sighting
    frames: dict[float, list[Box]] = field(default_factory=dict)
    background: list[float] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)
    size: tuple[int, int] = (0, 0)  # the source frame the polygons are in (0: unknown, the clip's own)


def epoch(text: str) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def _key(t: Any) -> float:
    return round(float(t), 3)


def plan(meta: dict[str, Any], min_sharpness: float | None) -> Plan:
    det = meta.get("detection") or {}
    size = (int(det.get("frame_width") or 0), int(det.get("frame_height") or 0))
    track = det.get("track")
    frames_info = det.get("track_frames")
    if track is not None and frames_info is not None:
        out = _whole(track, frames_info)
    elif track:
        out = _codes_only(track)
    else:
        out = _first_sighting(meta, det)
    out.size = size
    if min_sharpness is not None:
        for t, boxes in list(out.frames.items()):
            figures = [b.sharpness for b in boxes if b.category == CODE]
            if not figures or any(s is None or s < min_sharpness for s in figures):
                del out.frames[t]
                out.left_out["under --min-sharpness"] += 1
    return out


def _reads_at(track: list[dict[str, Any]]) -> dict[float, list[Box]]:
    at: dict[float, list[Box]] = {}
    for code in track:
        for s in code.get("sightings") or []:
            at.setdefault(_key(s["t"]), []).append(Box(CODE, s["polygon"], code.get("cid"), s.get("decoder"),
                                                       s.get("sharpness")))
    return at


def _whole(track: list[dict[str, Any]], info: dict[str, Any]) -> Plan:
    reads = _reads_at(track)
    out = Plan("whole")
    for t in info.get("times") or []:
        out.frames[_key(t)] = list(reads.get(_key(t), []))
    for s in info.get("symbols") or []:
        category = KIND_CATEGORY.get(s.get("kind"))
        t = _key(s["t"])
        if category is None or t not in out.frames:
            continue  # a kind this exporter does not know, or a frame the track does not hold: not trusted
        out.frames[t].append(Box(category, s["polygon"]))
    out.background = [_key(t) for t in info.get("empty") or []]
    return out


def _codes_only(track: list[dict[str, Any]]) -> Plan:
    """An older track: each CID thinned on its own, so a time is whole only where every CID in view then
    (between its first and last sighting) has a sighting."""
    reads = _reads_at(track)
    spans = [(min(ts), max(ts)) for code in track if (ts := [_key(s["t"]) for s in code.get("sightings") or []])]
    out = Plan("codes")
    for t, boxes in sorted(reads.items()):
        if sum(1 for a, b in spans if a <= t <= b) == len(boxes):
            out.frames[t] = boxes
        else:
            out.left_out["not whole (an older agent's track)"] += 1
    return out


def _first_sighting(meta: dict[str, Any], det: dict[str, Any]) -> Plan:
    out = Plan("first_sighting")
    clip = meta.get("clip") or {}
    if not det.get("polygon") or not clip.get("start_at") or not meta.get("detected_at"):
        return out
    try:
        t = _key(epoch(meta["detected_at"]) - epoch(clip["start_at"]))
    except ValueError:  # the receiver stores what it was sent: one clip's bad times never stop an export
        out.left_out["clip.start_at or detected_at not a time"] += 1
        return out
    if 0 <= t < float(clip.get("duration_s") or 1e9):
        out.frames[t] = [Box(CODE, det["polygon"], meta.get("cid") or None, det.get("decoder"), None,
                             "first_sighting")]
    return out
