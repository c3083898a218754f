"""Many LDOs for the training-set export, quickly: one real clip (two QR codes passing, drawn where
the factory records) reused with distinct metadata per LDO, stored through the receiver's own
storage layer (objects + index), as `POST /ingest/ldo` stores them."""

from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.delivery.contract import rfc3339
from tests.media_factory import make_video

FPS = 30
SIZE = (640, 360)
# 200 px/s: ~7 px a frame, so a frame exported for the wrong time has its code off by more than 4 px
CODES = [("CID-EXPORT-A", 1.0, 2.8, 30), ("CID-EXPORT-B", 2.0, 3.5, 200)]
SPEED = 200.0
EVERY = 3  # a sighting every 3rd frame, as the detector's 10 Hz picks on 30 fps
BASE_EPOCH = 1_790_000_000.0  # 2026-09-21: any fixed day
SPACING_S = 10.0  # LDOs of one device this far apart: their clips share no frame


@dataclass
class Clip:
    video: bytes
    labels: dict[int, list[tuple[Any, tuple[int, int, int, int]]]]

    def track(self) -> list[dict[str, Any]]:
        by_cid: dict[str, list[dict[str, Any]]] = {}
        for n in sorted(self.labels):
            if n % EVERY:
                continue
            for cid, (x0, y0, x1, y1) in self.labels[n]:
                by_cid.setdefault(cid, []).append({
                    "t": round(n / FPS, 3), "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "decoder": "zxing",
                    "sharpness": float(100 + 10 * (n % 30))})  # 100..390: a filter keeps some of each clip
        return [{"cid": c, "sightings": s} for c, s in by_cid.items()]


def make_clip(folder: Path) -> Clip:
    labels: dict[int, list] = {}
    path = make_video(folder / "clip.mp4", seconds=5, fps=FPS, size=SIZE, codes=CODES, speed_px_s=SPEED,
                      labels=labels)
    return Clip(path.read_bytes(), labels)


def metadata(clip: Clip, i: int, device: str, start: float, legacy: bool) -> dict[str, Any]:
    track = clip.track()
    first = track[0]["sightings"][0]
    det: dict[str, Any] = {"decoder": "zxing", "polygon": first["polygon"], "frame_width": SIZE[0],
                           "frame_height": SIZE[1], "hits": len(track[0]["sightings"])}
    if not legacy:
        det["track"] = track
    return {"schema_version": 1, "event_id": str(uuid.uuid4()), "device_id": device, "cid": CODES[0][0],
            "detected_at": rfc3339(start + first["t"]),
            "clip": {"start_at": rfc3339(start), "duration_s": 5.0, "fps": float(FPS), "frames": 5 * FPS,
                     "width": SIZE[0], "height": SIZE[1], "codec": "h264"},
            "detection": det, "agent": {"version": "test"}}


@dataclass
class Expected:
    ldos: int = 0
    legacy: int = 0
    images: int = 0
    boxes: int = 0

    def add(self, meta: dict[str, Any], min_sharpness: float | None = None) -> None:
        self.ldos += 1
        track = meta["detection"].get("track")
        if track is None:
            if min_sharpness is None:
                self.legacy += 1
                self.images += 1
                self.boxes += 1
            return
        times = set()
        for code in track:
            for s in code["sightings"]:
                if min_sharpness is None or s["sharpness"] >= min_sharpness:
                    times.add(s["t"])
                    self.boxes += 1
        self.images += len(times)


def store_ldos(storage: Any, clip: Clip, n: int, first: int = 0, legacy_every: int = 10, devices: int = 4,
               workers: int = 8) -> list[dict[str, Any]]:
    """n LDOs numbered from `first`: device cam-(i % devices), clips SPACING_S apart on each device,
    every `legacy_every`-th without a track (an older agent). Returns their metadata."""
    metas = [metadata(clip, i, f"cam-{i % devices}", BASE_EPOCH + (i // devices) * SPACING_S,
                      legacy=legacy_every > 0 and i % legacy_every == legacy_every - 1)
             for i in range(first, first + n)]

    def put(meta: dict[str, Any]) -> None:
        storage.ingest(meta["event_id"], meta, io.BytesIO(clip.video), f"{meta['event_id']}.mp4")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, metas))
    return metas
