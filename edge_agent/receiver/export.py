"""`edge-agent receiver export`: the LDOs of a store as a training set for QR-code localisation.

Each LDO's clip is decoded with PyAV at its track's times (`metadata.detection.track`, clip
seconds) and every frame with a sighting becomes a JPEG with its boxes, in the formats training
tools read:

    coco: OUT/images/*.jpg and OUT/annotations.json (images, annotations with bbox + segmentation
          polygon, categories), plus each annotation's cid, decoder, sharpness and source
    yolo: OUT/images/*.jpg, OUT/labels/*.txt (class cx cy w h, normalised) and OUT/data.yaml

LDOs come from the index (`--index`, oldest first) and their objects from the store (`--storage`,
a folder or S3). An LDO from an agent without tracks is exported with the one polygon it has, its
first sighting (at `detected_at`), marked `source: first_sighting` (COCO) and listed in
OUT/first_sighting_images.txt. Two clips of one device that overlap (two products in view) hold the
same frames: each frame is exported once, named by device and frame number.

Resumable: OUT/export-state.sqlite3 remembers the LDOs done, the images and their boxes; a second
run adds only what is new and rewrites the COCO file (or data.yaml) from it. An LDO is marked done
in the same transaction as its rows, after its JPEGs are on disk, so a run cut short redoes at most
the LDOs in flight.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import cv2

from .storage import LdoStorage, parse_time_us, safe_segment

log = logging.getLogger("edge_agent.receiver")

FORMATS = ("coco", "yolo")
CATEGORY = "qr_code"
JPEG_QUALITY = 92
STATE_FILE = "export-state.sqlite3"
_DDL = [
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ldo (id TEXT PRIMARY KEY, images INTEGER NOT NULL, note TEXT)",
    "CREATE TABLE IF NOT EXISTS image (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, file TEXT NOT NULL,"
    " width INTEGER NOT NULL, height INTEGER NOT NULL, ldo TEXT NOT NULL, t REAL NOT NULL, device_id TEXT)",
    "CREATE TABLE IF NOT EXISTS box (id INTEGER PRIMARY KEY, image INTEGER NOT NULL, cid TEXT NOT NULL,"
    " polygon TEXT NOT NULL, decoder TEXT, sharpness REAL, source TEXT NOT NULL)",
]


class ExportError(Exception):
    """A usage problem (an output folder made for another format or filter)."""


@dataclass
class Frame:
    key: str  # device and frame number: the same picture from two overlapping clips has one key
    file: str
    width: int
    height: int
    t: float
    boxes: list[dict[str, Any]]


@dataclass
class LdoFrames:
    ldo_id: str
    device_id: str
    frames: list[Frame] = field(default_factory=list)
    note: str | None = None  # why nothing was exported (no video, no sighting, unreadable)


@dataclass
class ExportResult:
    listed: int = 0
    done_before: int = 0
    exported: int = 0
    skipped: int = 0
    images: int = 0
    boxes: int = 0
    seconds: float = 0.0


def wanted(meta: dict[str, Any], min_sharpness: float | None) -> tuple[dict[float, list[dict[str, Any]]], int, int]:
    """Clip time -> boxes wanted there (cid, polygon, decoder, sharpness, source), and the source frame
    size the polygons are in. Old metadata without a track gives its first sighting, at detected_at."""
    det = meta.get("detection") or {}
    size = (int(det.get("frame_width") or 0), int(det.get("frame_height") or 0))
    out: dict[float, list[dict[str, Any]]] = {}
    track = det.get("track")
    if track:
        for code in track:
            for s in code.get("sightings") or []:
                sharp = s.get("sharpness")
                if min_sharpness is not None and (sharp is None or sharp < min_sharpness):
                    continue
                out.setdefault(round(float(s["t"]), 3), []).append(
                    {"cid": code["cid"], "polygon": s["polygon"], "decoder": s.get("decoder"), "sharpness": sharp,
                     "source": "track"})
        return out, *size
    clip = meta.get("clip") or {}
    if min_sharpness is not None or not det.get("polygon") or not clip.get("start_at") or not meta.get("detected_at"):
        return out, *size  # no sharpness known: a sharpness filter leaves it out
    t = round(_epoch(meta["detected_at"]) - _epoch(clip["start_at"]), 3)
    if 0 <= t < float(clip.get("duration_s") or 1e9):
        out[t] = [{"cid": meta.get("cid") or "", "polygon": det["polygon"], "decoder": det.get("decoder"),
                   "sharpness": None, "source": "first_sighting"}]
    return out, *size


def _epoch(text: str) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def decode_at(video: bytes, times: list[float]) -> Iterator[tuple[float, Any]]:
    """(wanted time, BGR picture) for each wanted clip time: the frame presented at it (within half a
    frame), as players show the clip (its edit list honoured). Decodes up to the last wanted time."""
    if not times:
        return
    pending = sorted(times)
    with av.open(io.BytesIO(video)) as c:
        v = c.streams.video[0]
        v.thread_type = "AUTO"
        half = 0.5 / float(v.average_rate or 30)
        for frame in c.decode(v):
            if frame.time is None:
                continue
            while pending and pending[0] < frame.time - half:
                pending.pop(0)  # no frame at that time (a re-timed clip): skipped
            if pending and abs(pending[0] - frame.time) <= half:
                picture = frame.to_ndarray(format="bgr24")
                while pending and abs(pending[0] - frame.time) <= half:
                    yield pending.pop(0), picture
            if not pending:
                return


class Exporter:
    def __init__(self, storage: LdoStorage, out: Path, fmt: str, min_sharpness: float | None = None,
                 workers: int = 4):
        if fmt not in FORMATS:
            raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.storage = storage
        self.out = out
        self.fmt = fmt
        self.min_sharpness = min_sharpness
        self.workers = max(1, workers)
        (out / "images").mkdir(parents=True, exist_ok=True)
        if fmt == "yolo":
            (out / "labels").mkdir(exist_ok=True)
        self.db = sqlite3.connect(out / STATE_FILE)
        for stmt in _DDL:
            self.db.execute(stmt)
        self._settle("format", fmt)
        self._settle("min_sharpness", "" if min_sharpness is None else repr(float(min_sharpness)))
        self.db.commit()

    def _settle(self, key: str, value: str) -> None:
        """An output folder holds one export: another format or filter would mix two sets."""
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (key, value))
        elif row[0] != value:
            raise ExportError(f"{self.out} holds an export with {key.replace('_', '-')} {row[0] or 'unset'!r}, not "
                              f"{value or 'unset'!r}: use another --out, or the same options to add to it")

    def close(self) -> None:
        self.db.close()

    # --- one LDO (worker threads) -------------------------------------------------------------

    def frames_of(self, ldo_id: str, base: str, has_video: bool) -> LdoFrames:
        raw = self.storage.objects.get(base + ".json")
        record = json.loads(raw) if raw is not None else {}
        meta = record.get("metadata") or {}
        device = safe_segment(record.get("device_id") or meta.get("device_id"), "unknown-device")
        result = LdoFrames(ldo_id, device)
        if not has_video:
            result.note = "no video"
            return result
        want, src_w, src_h = wanted(meta, self.min_sharpness)
        if not want:
            result.note = "no sighting" + (" at that sharpness" if self.min_sharpness is not None else "")
            return result
        video = self.storage.objects.get(base + ".mp4")
        if video is None:
            result.note = "video missing from the store"
            return result
        clip = meta.get("clip") or {}
        start = _epoch(clip["start_at"]) if clip.get("start_at") else None
        fps = float(clip.get("fps") or 30.0)
        try:
            for t, picture in decode_at(video, list(want)):
                h, w = picture.shape[:2]
                sx, sy = (w / src_w if src_w else 1.0), (h / src_h if src_h else 1.0)
                # the frame's name: its device and number on the device's clock, shared by overlapping clips
                key = f"{device}_{round((start + t) * fps)}" if start is not None else f"{ldo_id}_{round(t * 1000)}"
                name = f"{key}.jpg"
                path = self.out / "images" / name
                if not path.exists():
                    ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                    if not ok:
                        raise ValueError("JPEG encoding failed")
                    tmp = path.with_name(f"{name}.{threading.get_ident()}.part")  # two clips may hold the frame
                    tmp.write_bytes(jpeg.tobytes())
                    os.replace(tmp, path)
                boxes = [{**b, "polygon": [[x * sx, y * sy] for x, y in b["polygon"]]} for b in want[t]]
                result.frames.append(Frame(key, name, w, h, t, boxes))
        except (av.error.FFmpegError, ValueError, IndexError) as exc:
            result.frames = []
            result.note = f"video does not decode: {exc}"
        return result

    # --- the run (calling thread) -------------------------------------------------------------

    def run(self, device_id: str | None = None, since_us: int | None = None,
            progress: bool | None = None) -> ExportResult:
        from tqdm import tqdm

        started = time.perf_counter()
        res = ExportResult()
        done = {r[0] for r in self.db.execute("SELECT id FROM ldo")}
        total, _ = self.storage.index.list(0, 0, device_id=device_id, since_us=since_us)
        disable = None if progress is None else not progress
        with ThreadPoolExecutor(self.workers) as pool, \
                tqdm(total=total, desc="export", unit=" LDO", disable=disable) as bar:
            flight: deque[Future[LdoFrames]] = deque()
            for ldo_id, base, has_video in self.storage.index.walk(device_id=device_id, since_us=since_us):
                res.listed += 1
                if ldo_id in done:
                    res.done_before += 1
                    bar.update(1)
                    continue
                flight.append(pool.submit(self.frames_of, ldo_id, base, has_video))
                while len(flight) >= 2 * self.workers or (flight and flight[0].done()):
                    self._record(flight.popleft().result(), res)
                    bar.update(1)
            while flight:
                self._record(flight.popleft().result(), res)
                bar.update(1)
        self._write_index()
        res.seconds = time.perf_counter() - started
        return res

    def _record(self, got: LdoFrames, res: ExportResult) -> None:
        with self.db:
            for f in got.frames:
                cur = self.db.execute("INSERT OR IGNORE INTO image (key, file, width, height, ldo, t, device_id)"
                                      " VALUES (?, ?, ?, ?, ?, ?, ?)",
                                      (f.key, f.file, f.width, f.height, got.ldo_id, f.t, got.device_id))
                if not cur.rowcount:
                    continue  # the same frame from an overlapping clip: already there
                image_id = cur.lastrowid
                res.images += 1
                for b in f.boxes:
                    self.db.execute("INSERT INTO box (image, cid, polygon, decoder, sharpness, source) VALUES"
                                    " (?, ?, ?, ?, ?, ?)", (image_id, b["cid"], json.dumps(b["polygon"]),
                                                            b["decoder"], b["sharpness"], b["source"]))
                    res.boxes += 1
                if self.fmt == "yolo":
                    self._yolo_labels(f)
            self.db.execute("INSERT OR REPLACE INTO ldo (id, images, note) VALUES (?, ?, ?)",
                            (got.ldo_id, len(got.frames), got.note))
        if got.frames:
            res.exported += 1
        else:
            res.skipped += 1
            log.debug("export: nothing from ldo=%s (%s)", got.ldo_id, got.note)

    def _yolo_labels(self, f: Frame) -> None:
        lines = []
        for b in f.boxes:
            x0, y0, x1, y1 = _bounds(b["polygon"], f.width, f.height)
            lines.append(f"0 {(x0 + x1) / 2 / f.width:.6f} {(y0 + y1) / 2 / f.height:.6f} "
                         f"{(x1 - x0) / f.width:.6f} {(y1 - y0) / f.height:.6f}")
        _write_atomic(self.out / "labels" / (Path(f.file).stem + ".txt"), "\n".join(lines) + "\n")

    def _write_index(self) -> None:
        """The whole set's index, from the state: annotations.json (coco) or data.yaml (yolo), and the
        list of images whose only box is an old clip's first sighting."""
        legacy = [r[0] for r in self.db.execute(
            "SELECT DISTINCT i.file FROM image i JOIN box b ON b.image = i.id WHERE b.source = 'first_sighting'"
            " ORDER BY i.id")]
        _write_atomic(self.out / "first_sighting_images.txt", "".join(f"images/{f}\n" for f in legacy))
        if self.fmt == "yolo":
            # ultralytics' dataset file: the labels are found beside the images (images/ -> labels/)
            _write_atomic(self.out / "data.yaml", f"path: {self.out.resolve()}\ntrain: images\nval: images\n"
                                                  f"names:\n  0: {CATEGORY}\n")
            return
        images = [{"id": i, "file_name": f, "width": w, "height": h, "ldo_id": ldo, "t": t, "device_id": d}
                  for i, f, w, h, ldo, t, d in self.db.execute(
                      "SELECT id, file, width, height, ldo, t, device_id FROM image ORDER BY id")]
        sizes = {im["id"]: (im["width"], im["height"]) for im in images}
        annotations = []
        for bid, image, cid, poly, decoder, sharp, source in self.db.execute(
                "SELECT id, image, cid, polygon, decoder, sharpness, source FROM box ORDER BY id"):
            points = json.loads(poly)
            x0, y0, x1, y1 = _bounds(points, *sizes[image])
            annotations.append({"id": bid, "image_id": image, "category_id": 1,
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0,
                                "segmentation": [[round(v, 2) for p in points for v in p]],
                                "cid": cid, "decoder": decoder, "sharpness": sharp, "source": source})
        coco = {"info": {"description": "QR code localisation labels from edge-agent clips",
                         "date_created": datetime.now().astimezone().isoformat(timespec="seconds")},
                "images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": CATEGORY, "supercategory": "code"}]}
        _write_atomic(self.out / "annotations.json", json.dumps(coco))


def _bounds(points: list[list[float]], w: int, h: int) -> tuple[float, float, float, float]:
    """The polygon's box, kept inside the picture (a decoder may outline a code cut by the edge)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return max(0.0, min(xs)), max(0.0, min(ys)), min(float(w), max(xs)), min(float(h), max(ys))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def since_us(text: str | None) -> int | None:
    """`--since` (RFC 3339, or a date: midnight UTC) as microseconds; ValueError when not a time."""
    if not text:
        return None
    try:
        return parse_time_us(text if "T" in text else text + "T00:00:00+00:00")
    except ValueError:
        raise ValueError(f"--since {text!r}: not a time such as 2026-11-24 or 2026-11-24T08:00:00Z") from None


def export_args(args: Any) -> int:
    """`edge-agent receiver export`: exit 0 done, 64 usage, 69 store or index unreachable, 78 bad store spec."""
    import sys

    from .storage import StorageUnavailable, make_storage

    name = "edge-agent receiver export"
    if not args.out or not args.format:
        print(f"{name}: --format coco|yolo and --out DIR are required", file=sys.stderr)
        return 64
    try:
        since = since_us(args.since)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 64
    try:
        storage = make_storage(args.storage, Path(args.data_dir), args.s3_endpoint, args.site, args.index)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 78
    try:
        exporter = Exporter(storage, Path(args.out), args.format, args.min_sharpness, args.workers)
    except ExportError as exc:
        storage.index.close()
        print(f"{name}: {exc}", file=sys.stderr)
        return 64
    try:
        res = exporter.run(device_id=args.device_id, since_us=since, progress=sys.stderr.isatty())
    except StorageUnavailable as exc:
        print(f"{name}: {exc} (is the store reachable? run it again to resume)", file=sys.stderr)
        return 69
    finally:
        exporter.close()
        storage.index.close()
    print(f"exported {res.exported} LDOs ({res.images} images, {res.boxes} boxes) to {args.out} as {args.format} "
          f"in {res.seconds:.1f} s: {res.listed} listed, {res.done_before} done before, {res.skipped} without a "
          f"sighting to export")
    return 0
