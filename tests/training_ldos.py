"""Clips for the training-set export whose every code is known: each a real 5 s video (a QR code whose payload
the CID rule refuses, then two CIDs passing, then nothing), with the metadata an agent sends for it, built
from where the video factory drew each code. Each clip draws its own number on every frame, so no two clips
share a picture (the export keeps one of identical pictures). Stored through the receiver's own storage
layer (objects + index), as `POST /ingest/ldo` stores them.

Timeline, analysed every 3rd frame (10 Hz on 30 fps): 0.2-0.9 s the refused code, 1.0-2.8 s CID A,
2.0-3.5 s CID B, the rest empty: background pictures from the agent's `empty` list.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.delivery.contract import rfc3339
from tests.media_factory import qr_image, symbol_box, write_gray_h264

FPS = 30
SIZE = (640, 360)
SCALE = 5
REFUSED = "not a CID: spaces"
# (payload, from s, to s, top row, first column); 200 px/s: ~7 px a frame, so a frame exported for the wrong
# time has its code off by more than 4 px
CODES = [(REFUSED, 0.2, 0.9, 30, 20), ("CID-EXPORT-A", 1.0, 2.8, 30, 20), ("CID-EXPORT-B", 2.0, 3.5, 200, 180)]
SPEED = 200.0
EVERY = 3
BASE_EPOCH = 1_790_000_000.0  # 2026-09-21: any fixed day
SPACING_S = 10.0  # clips of one device this far apart share no frame
SECONDS = 5.0


@dataclass
class Clip:
    video: bytes
    labels: dict[int, list[tuple[str, tuple[int, int, int, int]]]]  # frame -> (payload, box) as drawn
    size: tuple[int, int] = SIZE

    def analysed(self) -> list[int]:
        return list(range(0, round(SECONDS * FPS), EVERY))

    def track(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """`detection.track` and `.track_frames` as an agent analysing every 3rd frame sends them."""
        by_cid: dict[str, list[dict[str, Any]]] = {}
        times, symbols = [], []
        busy = {n for n in self.analysed() if self.labels.get(n)}
        for n in sorted(busy):
            t = round(n / FPS, 3)
            times.append(t)
            for k, (payload, (x0, y0, x1, y1)) in enumerate(self.labels[n]):
                poly = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
                if payload == REFUSED:
                    symbols.append({"t": t, "polygon": poly, "kind": "rejected"})
                    continue
                by_cid.setdefault(payload, []).append({
                    "t": t, "polygon": poly, "decoder": "zxing",
                    # 100..390, two codes of a frame apart: a filter keeps some frames of each clip, and drops
                    # frames in which one code is sharp enough and the other is not
                    "sharpness": float(100 + 10 * ((n + 13 * k) % 30))})
        frames = self.analysed()
        empty = [round(n / FPS, 3) for i, n in enumerate(frames)
                 if not any(m in busy for m in frames[max(0, i - 1):i + 2])]
        return ([{"cid": c, "sightings": s} for c, s in by_cid.items()],
                {"times": times, "symbols": symbols, "empty": empty, "analysed": len(frames)})


def make_clip(folder: Path, tag: int = 0, size: tuple[int, int] = SIZE) -> Clip:
    """A clip numbered `tag`; a larger size keeps the codes where they are, in a larger picture."""
    w, h = size
    rng = np.random.default_rng(7)
    background = cv2.GaussianBlur((rng.random((h, w)) * 120 + 60).astype(np.uint8), (7, 7), 0)
    images = [(qr_image(p, SCALE), a, b, y, x) for p, a, b, y, x in CODES]
    symbols = [symbol_box(q) for q, *_ in images]
    labels: dict[int, list[tuple[str, tuple[int, int, int, int]]]] = {}

    def frames() -> Iterator[np.ndarray]:
        for n in range(round(SECONDS * FPS)):
            t = n / FPS
            img = np.roll(background, n * 3, axis=1).copy()
            cv2.putText(img, f"#{tag} {t:05.2f}", (10, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
            for k, (q, a, b, y, x0) in enumerate(images):
                if a <= t <= b:
                    x = min(w - q.shape[1], x0 + int((t - a) * SPEED))
                    img[y:y + q.shape[0], x:x + q.shape[1]] = q
                    sx0, sy0, sx1, sy1 = symbols[k]
                    labels.setdefault(n, []).append((CODES[k][0], (x + sx0, y + sy0, x + sx1, y + sy1)))
            yield img

    path = write_gray_h264(folder / f"clip-{tag}.mp4", frames(), size, FPS)
    return Clip(path.read_bytes(), labels, size)


def make_clips(folder: Path, n: int, first: int = 0, workers: int = 2, size: tuple[int, int] = SIZE) -> list[Clip]:
    """n distinct clips (encoding releases the GIL: threads share the cores)."""
    folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: make_clip(folder, i, size), range(first, first + n)))


def metadata(clip: Clip, device: str, start: float, kind: str = "whole") -> dict[str, Any]:
    """What an agent sends: kind whole (a track of whole frames), codes (an older agent's track, no
    track_frames), first_sighting (an older agent still: no track)."""
    track, frames = clip.track()
    first = track[0]["sightings"][0]
    det: dict[str, Any] = {"decoder": "zxing", "polygon": first["polygon"], "frame_width": clip.size[0],
                           "frame_height": clip.size[1], "hits": len(track[0]["sightings"])}
    if kind in ("whole", "codes"):
        det["track"] = track
    if kind == "whole":
        det["track_frames"] = frames
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{device}/{start}/{len(clip.video)}"))  # the same on every run
    return {"schema_version": 1, "event_id": event_id, "device_id": device, "cid": track[0]["cid"],
            "detected_at": rfc3339(start + first["t"]),
            "clip": {"start_at": rfc3339(start), "duration_s": SECONDS, "fps": float(FPS), "frames": int(SECONDS * FPS),
                     "width": clip.size[0], "height": clip.size[1], "codec": "h264"},
            "detection": det, "agent": {"version": "test"}}


@dataclass
class Expected:
    """The pictures with codes and the boxes an export must give for the clips added."""

    clips: int = 0
    legacy: int = 0
    images: int = 0
    boxes: int = 0
    by_device: dict[str, int] = field(default_factory=dict)

    def add(self, meta: dict[str, Any], min_sharpness: float | None = None) -> None:
        self.clips += 1
        det = meta["detection"]
        frames: dict[float, list[float | None]] = {}  # time -> sharpness of each box (None: a symbol)
        if "track" not in det:
            if min_sharpness is None:
                frames[0.0] = [None]
                self.legacy += 1
        else:
            for code in det["track"]:
                for s in code["sightings"]:
                    frames.setdefault(s["t"], []).append(s["sharpness"])
            if "track_frames" in det:
                for s in det["track_frames"]["symbols"]:
                    frames.setdefault(s["t"], []).append(None)
        for boxes in frames.values():
            reads = [s for s in boxes if s is not None]
            if min_sharpness is not None and (not reads or min(reads) < min_sharpness):
                continue
            self.images += 1
            self.boxes += len(boxes)
            self.by_device[meta["device_id"]] = self.by_device.get(meta["device_id"], 0) + 1


@dataclass
class Stored:
    meta: dict[str, Any]
    ldo_id: str
    clip: Clip


def store_ldos(storage: Any, clips: list[Clip], devices: list[str], kinds: tuple[str, ...] = ("whole",),
               first: int = 0, spacing_s: float = SPACING_S, workers: int = 8) -> list[Stored]:
    """One LDO per clip: device devices[i % len], clips `spacing_s` apart on each device, the kind of
    metadata cycling through `kinds`. Returns them with their LDO ids."""
    metas = [metadata(clip, devices[i % len(devices)], BASE_EPOCH + ((first + i) // len(devices)) * spacing_s,
                      kinds[i % len(kinds)]) for i, clip in enumerate(clips)]

    def put(i: int) -> Stored:
        meta = metas[i]
        body = storage.ingest(meta["event_id"], meta, io.BytesIO(clips[i].video), f"{meta['event_id']}.mp4")
        return Stored(meta, body["id"], clips[i])

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(put, range(len(clips))))
