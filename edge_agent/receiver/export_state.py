"""An export's folder and what it remembers (OUT/export-state.sqlite3): the clips done, their splits, the
images and their boxes; the pictures and label files on disk; the index files written from it.

Layout, both formats (SPLIT: train, val, and test when asked for):
    OUT/images/SPLIT/<clip id>_<ms>.jpg      a frame: its clip's id and its time in that clip, in ms
    coco: OUT/annotations/SPLIT.json           COCO with COCO-VID's videos/video_id/frame_id
    yolo: OUT/labels/SPLIT/<clip id>_<ms>.txt  and OUT/data.yaml (paths relative to the file)

Names cannot clash: a clip's id is unique in the store and a time once in a clip. A picture identical to
one already exported (its JPEG hashes the same: two overlapping clips of one camera, the same
footage delivered twice) is not written again; the image already there gets any box it lacked.

Each clip is recorded in one transaction after its JPEGs are on disk (in OUT/pending/), so a run cut
short redoes at most the clips in flight, and a second run adds only what is new. Splits are assigned
when a run has recorded its clips, by groups of overlapping clips (assign_splits), whatever order the
clips came in; the next run assigns what a run cut short left pending.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .. import __version__
from ..delivery.contract import rfc3339
from .export_frames import Picture
from .export_plan import CATEGORIES, CODE, Box
from .export_split import SPLITS, bucket_us, draw, group_key

PENDING = ""  # a clip recorded in this run, its split not assigned yet: its files are in OUT/pending/

STATE_FILE = "export-state.sqlite3"
LAYOUT = "2"  # the folder layout and state tables; an export made by an older layout is not mixed into
_DDL = [
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ldo (video INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, device_id TEXT NOT NULL,"
    " start_us INTEGER, end_us INTEGER, split TEXT NOT NULL, info TEXT NOT NULL, images INTEGER NOT NULL,"
    " note TEXT)",
    "CREATE INDEX IF NOT EXISTS ldo_device_time ON ldo (device_id, start_us)",
    "CREATE TABLE IF NOT EXISTS image (id INTEGER PRIMARY KEY, file TEXT UNIQUE NOT NULL, split TEXT NOT NULL,"
    " ldo TEXT NOT NULL, t REAL NOT NULL, frame_id INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,"
    " captured_at TEXT, sharpness REAL, exposure REAL, labels TEXT NOT NULL, background INTEGER NOT NULL,"
    " digest TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS image_digest ON image (digest)",
    "CREATE TABLE IF NOT EXISTS box (id INTEGER PRIMARY KEY, image INTEGER NOT NULL, category INTEGER NOT NULL,"
    " cid TEXT, polygon TEXT NOT NULL, decoder TEXT, sharpness REAL, source TEXT NOT NULL, ldo TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS box_image ON box (image)",
]


class ExportError(Exception):
    """A usage problem (an output folder made for another format, filter or split)."""


class ExportState:
    def __init__(self, out: Path, fmt: str, settings: dict[str, str], background_ratio: float):
        self.out = out
        self.fmt = fmt
        self.background_ratio = background_ratio
        out.mkdir(parents=True, exist_ok=True)
        fresh = not (out / STATE_FILE).exists()
        if not fresh and not _has_layout(out / STATE_FILE):
            raise ExportError(f"{out} holds an export made by an older edge-agent: use another --out")
        self.db = sqlite3.connect(out / STATE_FILE)
        # a commit lost to a power cut only makes the next run redo that clip (its files are rewritten)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        for stmt in _DDL:
            self.db.execute(stmt)
        for key, value in {"layout": LAYOUT, "format": fmt, **settings}.items():
            self._settle(key, value)
        self.db.commit()
        self.background, self.with_codes = self.counts()
        self._pending_images = self._folder("images", PENDING)

    def counts(self) -> tuple[int, int]:
        """(background pictures, pictures with codes) in the set."""
        row = self.db.execute("SELECT COALESCE(SUM(background), 0), COUNT(*) FROM image").fetchone()
        return int(row[0]), int(row[1]) - int(row[0])

    def _settle(self, key: str, value: str) -> None:
        """An output folder holds one export: another format, filter or split would mix two sets."""
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (key, value))
        elif row[0] != value:
            raise ExportError(f"{self.out} holds an export with {key.replace('_', '-')} {row[0] or 'unset'!r}, not "
                              f"{value or 'unset'!r}: use another --out, or the same options to add to it")

    def close(self) -> None:
        self.db.close()

    def done(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM ldo")}

    # --- one clip -------------------------------------------------------------------------------

    def record(self, ldo_id: str, device_id: str, span_us: tuple[int, int] | None, start: float | None,
               info: dict[str, Any], labels: str, pictures: list[Picture],
               note: str | None) -> tuple[int, int, int, int]:
        """The clip's pictures on disk (in OUT/pending/ until the run assigns splits) and its rows in one
        transaction: (images added, of which background, boxes added, pictures identical to an image
        already there). `start`: the clip's start_at as epoch seconds, None when it has none or not a time
        (its images then have no capture time)."""
        added = background = boxes = identical = 0
        relabel: set[int] = set()
        rows: list[tuple[Picture, str]] = []
        folder = self._pending_images
        for pic in sorted(pictures, key=lambda p: p.background):  # pictures with codes first: the ratio counts them
            if pic.background and self.background + 1 > self.background_ratio * self.with_codes + 0.5:
                continue  # the set has its share of background pictures
            name = image_name(ldo_id, pic.t)
            same = self.db.execute("SELECT id FROM image WHERE digest = ?", (pic.digest,)).fetchone()
            if same is not None:
                if pic.written:
                    (folder / name).unlink(missing_ok=True)
                identical += 1
                n = self._merge(int(same[0]), pic.boxes, ldo_id)
                boxes += n
                if n:
                    relabel.add(int(same[0]))
                continue
            if not pic.written:
                _write_atomic(folder / name, pic.jpeg)
            rows.append((pic, name))
            self.background += pic.background
            self.with_codes += not pic.background
        with self.db:
            for pic, name in rows:
                image = self.db.execute(
                    "INSERT INTO image (file, split, ldo, t, frame_id, width, height, captured_at, sharpness, exposure,"
                    " labels, background, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, PENDING, ldo_id, pic.t, pic.frame_id, pic.width, pic.height, _captured(start, pic.t),
                     pic.sharpness, pic.exposure, "background" if pic.background else labels, int(pic.background),
                     pic.digest)).lastrowid
                assert image is not None
                for b in pic.boxes:
                    self._box(image, b, ldo_id)
                boxes += len(pic.boxes)
                added += 1
                background += pic.background
                relabel.add(image)
            if self.fmt == "yolo":
                for image in relabel:
                    self._yolo_labels(image)
            self.db.execute("INSERT INTO ldo (id, device_id, start_us, end_us, split, info, images, note) VALUES"
                            " (?, ?, ?, ?, ?, ?, ?, ?)", (ldo_id, device_id, span_us[0] if span_us else None,
                                                          span_us[1] if span_us else None, PENDING, json.dumps(info),
                                                          added, note))
        return added, background, boxes, identical

    # --- splits ---------------------------------------------------------------------------------

    def assign_splits(self, split_by: str, val: float, test: float) -> tuple[Counter[str], int]:
        """Give each clip recorded since the last assignment its split, and move its files there: (images per
        split, clips that join two clips already on different sides).

        Clips of one device that overlap in time, in a chain within an hour (a day with device-day), are one
        group whatever order they were recorded in: a group with a clip already assigned takes that clip's
        split (the earliest one's, should the new clip join two), a new group draws from its earliest clip's
        key (export_split.py)."""
        per_split: Counter[str] = Counter()
        bridged = 0
        devices = [r[0] for r in self.db.execute("SELECT DISTINCT device_id FROM ldo WHERE split = ?", (PENDING,))]
        for device in devices:
            rows = self.db.execute("SELECT video, id, start_us, end_us, split FROM ldo WHERE device_id = ?"
                                   " ORDER BY start_us IS NULL, start_us, id", (device,)).fetchall()
            for group in _overlapping(rows, bucket_us(split_by)):
                if all(r[4] != PENDING for r in group):
                    continue
                sides = [r[4] for r in group if r[4] != PENDING]
                bridged += len(set(sides)) > 1
                first = group[0]
                split = sides[0] if sides else draw(group_key(split_by, first[1], device, first[2]), val, test)
                for r in group:
                    if r[4] == PENDING:
                        per_split[split] += self._move(r[1], split)
        return per_split, bridged

    def _move(self, ldo_id: str, split: str) -> int:
        files = [r[0] for r in self.db.execute("SELECT file FROM image WHERE ldo = ? AND split = ?",
                                               (ldo_id, PENDING))]
        for kind, suffix in (("images", ".jpg"), ("labels", ".txt")):
            if kind == "labels" and self.fmt != "yolo":
                continue
            there = self._folder(kind, split)
            if not files:
                continue
            pending = self._folder(kind, PENDING)
            for file in files:
                src = pending / (Path(file).stem + suffix)
                if src.exists():  # a rename already done by a run cut short before its rows were updated
                    os.replace(src, there / src.name)
        with self.db:
            self.db.execute("UPDATE image SET split = ? WHERE ldo = ? AND split = ?", (split, ldo_id, PENDING))
            self.db.execute("UPDATE ldo SET split = ? WHERE id = ?", (split, ldo_id))
        return len(files)

    def _folder(self, kind: str, split: str) -> Path:
        folder = self.out / "pending" / kind if split == PENDING else self.out / kind / split
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def write_pending(self, ldo_id: str, pic: Picture) -> None:
        """A picture with codes on disk before its clip is recorded (a worker thread: names differ per clip
        and time, so workers never write the same file); `record` removes it if it is a duplicate."""
        _write_atomic(self._pending_images / image_name(ldo_id, pic.t), pic.jpeg)
        pic.written = True

    def _box(self, image: int, b: Box, ldo_id: str) -> None:
        self.db.execute("INSERT INTO box (image, category, cid, polygon, decoder, sharpness, source, ldo) VALUES"
                        " (?, ?, ?, ?, ?, ?, ?, ?)", (image, b.category, b.cid, json.dumps(b.polygon), b.decoder,
                                                      b.sharpness, b.source, ldo_id))

    def _merge(self, image: int, new: list[Box], ldo_id: str) -> int:
        """Boxes of an identical picture that the image lacks (a code by its CID, a symbol by where it is)."""
        have = [(c, cid, json.loads(p)) for c, cid, p in
                self.db.execute("SELECT category, cid, polygon FROM box WHERE image = ?", (image,))]
        n = 0
        with self.db:
            for b in new:
                if b.category == CODE and b.cid is not None and any(c == CODE and cid == b.cid for c, cid, _ in have):
                    continue
                if any(_overlap(b.polygon, p) > 0.5 for _, _, p in have):
                    continue
                self._box(image, b, ldo_id)
                have.append((b.category, b.cid, b.polygon))
                n += 1
        return n

    def _yolo_labels(self, image: int) -> None:
        file, split, w, h = self.db.execute("SELECT file, split, width, height FROM image WHERE id = ?",
                                            (image,)).fetchone()
        lines = []
        for category, poly in self.db.execute("SELECT category, polygon FROM box WHERE image = ? ORDER BY id",
                                              (image,)):
            bbox, _, _ = geometry(json.loads(poly), w, h)
            if bbox is None:
                continue
            x, y, bw, bh = bbox
            lines.append(f"{category - 1} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        _write_atomic(self._folder("labels", split) / (Path(file).stem + ".txt"),
                      "".join(f"{line}\n" for line in lines).encode())

    # --- the whole set's index files ----------------------------------------------------------------

    def splits(self) -> list[str]:
        return [s for s in SPLITS if self.db.execute("SELECT 1 FROM image WHERE split = ? LIMIT 1", (s,)).fetchone()]

    def write_index(self, license_name: str) -> None:
        if self.fmt == "yolo":
            self._write_yaml()
        else:
            for split in self.splits():
                (self.out / "annotations").mkdir(exist_ok=True)
                _write_atomic(self.out / "annotations" / f"{split}.json",
                              json.dumps(self._coco(split, license_name)).encode())
        legacy = [f"images/{s}/{f}" for f, s in self.db.execute(
            "SELECT DISTINCT i.file, i.split FROM image i WHERE i.labels = 'first_sighting' ORDER BY i.id")]
        _write_atomic(self.out / "first_sighting_images.txt", "".join(f"{p}\n" for p in legacy).encode())

    def _write_yaml(self) -> None:
        """ultralytics' dataset file. No `path:` key: ultralytics then takes the folder the file is in (a
        relative `path:` would be read against its own datasets folder), so the set can be moved whole."""
        present = self.splits()
        lines = ["# edge-agent receiver export: frames of clips, every QR symbol the agent saw in each boxed.",
                 "# 0: a CID read; 1: a QR code whose payload the CID rule refused; 2: a QR symbol located but not",
                 "# read. All three are QR codes in the picture: single_cls=True trains them as one class.",
                 "# Images with an empty label file are pictures without a code (background)."]
        for split in ("train", "val", "test"):
            if split in present:
                lines.append(f"{split}: images/{split}")
            elif split == "val" and "train" in present:
                lines.append("val: images/train  # no clip drew val: set --val, or add clips")
        lines.append("names:")
        lines += [f"  {c - 1}: {name}" for c, name in CATEGORIES.items()]
        _write_atomic(self.out / "data.yaml", ("\n".join(lines) + "\n").encode())

    def _coco(self, split: str, license_name: str) -> dict[str, Any]:
        videos: dict[str, dict[str, Any]] = {}
        for vid, ldo, device, info in self.db.execute(
                "SELECT video, id, device_id, info FROM ldo WHERE id IN (SELECT ldo FROM image WHERE split = ?)"
                " ORDER BY video", (split,)):
            videos[ldo] = {"id": vid, "name": ldo, "device_id": device, **json.loads(info)}
        images, sizes = [], {}
        for (iid, file, ldo, t, frame_id, w, h, captured, sharp, expo, labels, background) in self.db.execute(
                "SELECT id, file, ldo, t, frame_id, width, height, captured_at, sharpness, exposure, labels, background"
                " FROM image WHERE split = ? ORDER BY id", (split,)):
            images.append({"id": iid, "file_name": file, "width": w, "height": h, "license": 1,
                           "date_captured": captured, "video_id": videos[ldo]["id"], "frame_id": frame_id,
                           "ldo_id": ldo, "device_id": videos[ldo]["device_id"], "t": t, "sharpness": sharp,
                           "exposure": expo, "labels": labels, "background": bool(background)})
            sizes[iid] = (w, h, videos[ldo]["id"])
        annotations, instances = [], {}
        for bid, image, category, cid, poly, decoder, sharp, source in self.db.execute(
                "SELECT b.id, b.image, b.category, b.cid, b.polygon, b.decoder, b.sharpness, b.source FROM box b"
                " JOIN image i ON i.id = b.image WHERE i.split = ? ORDER BY b.id", (split,)):
            w, h, vid = sizes[image]
            bbox, area, segmentation = geometry(json.loads(poly), w, h)
            if bbox is None:
                continue  # an outline wholly outside the picture: nothing of it to see
            # a code keeps one instance id through its clip (COCO-VID), each other symbol is its own
            instance = instances.setdefault((vid, cid) if cid else ("box", bid), len(instances) + 1)
            annotations.append({"id": bid, "image_id": image, "category_id": category, "bbox": bbox, "area": area,
                                "segmentation": [segmentation], "iscrowd": 0, "instance_id": instance, "cid": cid,
                                "decoder": decoder, "sharpness": sharp, "source": source})
        now = datetime.now(timezone.utc)
        return {"info": {"description": "QR code localisation: frames of edge-agent clips, every QR symbol the agent "
                                        "saw in each one boxed", "version": __version__, "year": now.year,
                         "contributor": "edge-agent receiver export", "url": "",
                         "date_created": now.isoformat(timespec="seconds")},
                "licenses": [{"id": 1, "name": license_name, "url": ""}],
                "videos": list(videos.values()), "images": images, "annotations": annotations,
                "categories": [{"id": c, "name": name, "supercategory": "qr_code"} for c, name in CATEGORIES.items()]}


def geometry(points: list[list[float]], w: int, h: int) -> tuple[list[float] | None, float, list[float]]:
    """(bbox x, y, w, h; area; segmentation) of an outline cut to the picture (a decoder may outline a code
    the edge cuts). The area is the polygon's, not its box's. bbox None: nothing inside the picture."""
    poly = np.array(points, np.float32).reshape(-1, 2)
    frame = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    area, cut = cv2.intersectConvexConvex(poly, frame)
    if cut is None or len(cut) < 3 or area <= 0:
        if area > 0 or (poly.min(axis=0) >= 0).all() and (poly.max(axis=0) <= [w, h]).all():
            cut = poly.reshape(-1, 1, 2)  # not convex, wholly inside: the outline as it is
            area = abs(float(cv2.contourArea(poly)))
        else:
            return None, 0.0, []
    pts = cut.reshape(-1, 2)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None, 0.0, []
    return ([round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            round(float(area), 2), [round(float(v), 2) for p in pts for v in p])


def _overlap(a: list[Any], b: list[Any]) -> float:
    """Intersection over union of two outlines' boxes."""
    ax0, ay0, ax1, ay1 = _bounds(a)
    bx0, by0, bx1, by1 = _bounds(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def _bounds(points: list[Any]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _captured(start: float | None, t: float) -> str | None:
    """The frame's wall-clock time on the device's clock (COCO's date_captured)."""
    return rfc3339(start + t) if start is not None else None


def image_name(ldo_id: str, t: float) -> str:
    """A frame's file: its clip's id and its time in that clip, in ms."""
    return f"{ldo_id}_{round(t * 1000):06d}.jpg"


def _overlapping(rows: list[tuple[Any, ...]], bucket: int) -> list[list[tuple[Any, ...]]]:
    """Rows (video, id, start_us, end_us, split) of one device, by start time, in groups of clips that
    overlap in a chain within the bucket (hour or day) their chain starts in: a camera that always has a
    label in view would otherwise chain a whole shift into one group. A clip without times is a group of
    its own."""
    groups: list[list[tuple[Any, ...]]] = []
    end: int | None = None
    for r in rows:
        if r[2] is None or r[3] is None:
            groups.append([r])
            end = None
        elif end is not None and r[2] < end and r[2] // bucket == groups[-1][0][2] // bucket:
            groups[-1].append(r)
            end = max(end, r[3])
        else:
            groups.append([r])
            end = r[3]
    return groups


def _has_layout(path: Path) -> bool:
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM settings WHERE key = 'layout'").fetchone()
        return row is not None
    except sqlite3.Error:
        return False
    finally:
        db.close()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
