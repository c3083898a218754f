"""Is the training set trustworthy? Generates videos whose every code is known, replays them through the real
agent (as a training device is set up: detector.max_blind_s 0, clip.extend_while_in_view), stores the clips
as data-ingestion does, exports COCO and YOLO with `edge-agent receiver export`, and checks the sets as an
ML engineer would, with the field's readers:

- videos: CIDs in view together (their clips overlap), a QR code whose payload the CID rule refuses, a
  damaged QR code (located, never read), stretches with no code; three devices with odd ids (`line 1`,
  `ライン 2`, `cam/3 ü`); `line 1` replays three files in one command, the first of them twice (the same
  footage delivered twice);
- lost frames: every frame of every clip's track is exported, or is a picture identical to an exported
  one, or is a near-duplicate by the export's stated rule; anything else is lost (must be 0);
- every QR code zxing-cpp reads in an exported picture (every pass, and the symbols it locates but cannot
  read) is covered by a box of that picture; CID boxes against zxing-cpp's outline (IoU);
- background pictures: at the set ratio (within a tolerance for rounding per clip), none with a code;
- splits: no clip on two sides, no two overlapping clips of one device on two sides;
- `--device-id` of each odd id exports exactly that device's clips;
- readers: pycocotools (required), torchvision's CocoDetection and ultralytics' dataset check (each run
  when installed, else named as skipped: torch is gigabytes and no test dependency).

    python benchmarks/training_set_check.py [--keep DIR] [--negatives 0.1] [--val 0.5]

Prints the figures and exits 1 on any miss. Torch for the optional readers, in a venv of its own:
pip install torch==2.14.1 torchvision==0.29.1 ultralytics (x86_64; see the environment's notes).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import zxingcpp  # noqa: E402

from edge_agent.receiver.export_frames import MIN_SYMBOL_PX, NEAR_GREY, symbol_side  # noqa: E402
from edge_agent.receiver.export_plan import epoch  # noqa: E402
from edge_agent.receiver.storage import make_storage  # noqa: E402
from tests.media_factory import qr_image, write_gray_h264  # noqa: E402

FPS = 30
SIZE = (960, 540)
SCALE = 5
SPEED = 150.0
REFUSED = "refused payload!"  # spaces and '!': the default CID rule refuses it
DAMAGED = "CID-DAMAGED-0042"
# (payload, in view from, to, top row, first column) per file: CIDs overlapping in time (two clips that
# share frames), a refused code, a damaged one, and empty stretches at the start and end
FILES = {
    "a": [("CID-LINE1-A1", 1.0, 4.0, 40, 20), ("CID-LINE1-A2", 2.5, 5.5, 300, 40), (REFUSED, 3.0, 5.0, 40, 520),
          (DAMAGED, 6.0, 7.5, 200, 300), ("CID-LINE1-A3", 9.0, 10.5, 150, 60)],
    "b": [("CID-LINE1-B1", 1.0, 3.0, 100, 20), ("CID-LINE1-B2", 1.5, 3.5, 330, 400)],
    "c": [("CID-LINE2-C1", 1.0, 3.5, 60, 40), (REFUSED, 2.0, 4.0, 320, 500), ("CID-LINE2-C2", 5.0, 6.5, 200, 30)],
    "d": [("CID-CAM3-D1", 1.0, 2.5, 200, 100), ("CID-CAM3-D2", 1.2, 3.0, 40, 560)],
}
SECONDS = {"a": 13.0, "b": 6.0, "c": 9.0, "d": 5.5}
DEVICES = {"line 1": ["a", "b", "a"], "ライン 2": ["c"], "cam/3 ü": ["d"]}
CONFIG = ("device_id: {device}\ndetector:\n  max_blind_s: 0\nclip:\n  pre_roll_s: 1.5\n  post_roll_s: 2.0\n"
          "  extend_while_in_view: true\n")


def damaged(payload: str, scale: int) -> np.ndarray:
    """A QR code with a tenth of its data modules flipped (finders, timing and format kept): zxing-cpp
    locates it and reports a checksum error; nothing reads it."""
    q = qr_image(payload, scale)
    rng = np.random.default_rng(1)
    quiet = 2
    n = q.shape[0] // scale - 2 * quiet
    for i in range(n):
        for j in range(n):
            kept = (i < 9 and j < 9) or (i < 9 and j >= n - 8) or (i >= n - 8 and j < 9) or 6 in (i, j) \
                or (n - 9 <= i < n - 4 and n - 9 <= j < n - 4)
            if not kept and rng.random() < 0.1:
                y, x = (i + quiet) * scale, (j + quiet) * scale
                q[y:y + scale, x:x + scale] = 255 - q[y:y + scale, x:x + scale]
    return q


def make_file(path: Path, name: str) -> Path:
    w, h = SIZE
    rng = np.random.default_rng(len(name) * 7 + ord(name))
    background = cv2.GaussianBlur((rng.random((h, w)) * 120 + 60).astype(np.uint8), (7, 7), 0)
    images = [(damaged(p, SCALE) if p == DAMAGED else qr_image(p, SCALE), a, b, y, x) for p, a, b, y, x in FILES[name]]

    def frames() -> Iterator[np.ndarray]:
        for n in range(round(SECONDS[name] * FPS)):
            t = n / FPS
            img = np.roll(background, n * 2, axis=1).copy()
            cv2.putText(img, f"{name} {t:05.2f}", (10, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
            for q, a, b, y, x0 in images:
                if a <= t <= b:
                    x = min(w - q.shape[1], x0 + int((t - a) * SPEED))
                    img[y:y + q.shape[0], x:x + q.shape[1]] = q
            yield img

    return write_gray_h264(path, frames(), SIZE, FPS)


def replay(tmp: Path, device: str, files: list[Path]) -> Path:
    folder = tmp / f"clips-{len(list(tmp.glob('clips-*')))}"
    cfg = tmp / f"{folder.name}.yaml"
    cfg.write_text(CONFIG.format(device=json.dumps(device)), encoding="utf-8")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "edge_agent.cli", "replay", "--config", str(cfg), "--no-upload",
                          "--output-dir", str(folder), "-q", *map(str, files)], capture_output=True, text=True,
                         env=env, check=False, timeout=600)
    if res.returncode != 0:
        raise SystemExit(f"FAIL: replay for {device!r} exited {res.returncode}: {res.stderr[-2000:]}")
    return folder


def export(tmp: Path, data: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "edge_agent.cli", "receiver", "export", "--out", str(out),
                          "--data-dir", str(data), *args], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1200)
    return res, time.perf_counter() - t0


def thumb(gray: np.ndarray) -> np.ndarray:
    return cv2.resize(gray, (64, 36), interpolation=cv2.INTER_AREA).astype(np.int16)


def clip_frames(video: bytes, times: list[float]) -> dict[float, np.ndarray]:
    """Gray pictures of a clip at the given times (within half a frame)."""
    out: dict[float, np.ndarray] = {}
    pending = sorted(times)
    with av.open(io.BytesIO(video)) as c:
        for f in c.decode(c.streams.video[0]):
            if f.time is None:
                continue
            while pending and abs(pending[0] - f.time) <= 0.5 / FPS:
                out[pending.pop(0)] = f.to_ndarray(format="gray")
            if not pending:
                break
    return out


def iou(a: list[float], b: list[float]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax1, bx1) - max(a[0], b[0])) * max(0.0, min(ay1, by1) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def zxing_box(r: Any) -> list[float]:
    p = r.position
    xs = [p.top_left.x, p.top_right.x, p.bottom_left.x, p.bottom_right.x]
    ys = [p.top_left.y, p.top_right.y, p.bottom_left.y, p.bottom_right.y]
    return [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]


class Check:
    def __init__(self) -> None:
        self.misses: list[str] = []

    def __call__(self, ok: bool, line: str) -> None:
        print(("ok    " if ok else "MISS  ") + line)
        if not ok:
            self.misses.append(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--negatives", type=float, default=0.1, help="background ratio asked for (default 0.1)")
    ap.add_argument("--val", type=float, default=0.5, help="val share of the groups (default 0.5: this replay has "
                    "few groups, one a device)")
    ap.add_argument("--keep", metavar="DIR", help="keep the videos, clips and sets here")
    args = ap.parse_args()
    from pycocotools.coco import COCO

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="training-check-"))
    tmp.mkdir(parents=True, exist_ok=True)
    check = Check()
    try:
        files = {name: make_file(tmp / f"{name}.mp4", name) for name in FILES}
        metas: dict[str, dict[str, Any]] = {}
        videos: dict[str, bytes] = {}
        storage = make_storage(None, tmp / "receiver", None, "plant-a")
        for device, names in DEVICES.items():
            folder = replay(tmp, device, [files[n] for n in names])
            for meta_path in sorted(folder.glob("*.json")):
                meta = json.loads(meta_path.read_text())
                video = meta_path.with_suffix(".mp4")
                body = storage.ingest(meta["event_id"], meta, video.open("rb") if video.exists() else None,
                                      video.name if video.exists() else None)
                metas[body["id"]] = meta
                videos[body["id"]] = video.read_bytes() if video.exists() else b""
        storage.index.close()
        tracked = [m for m in metas.values() if (m["detection"].get("track_frames") or {}).get("times")]
        symbols = Counter(s["kind"] for m in tracked for s in m["detection"]["track_frames"]["symbols"])
        frames = sum(len(m["detection"]["track_frames"]["times"]) for m in tracked)
        print(f"replayed         {len(metas)} clips from {sum(len(v) for v in DEVICES.values())} files on "
              f"{len(DEVICES)} devices; track frames {frames}, refused outlines {symbols['rejected']}, no-reads "
              f"{symbols['unread']}")
        check(symbols["rejected"] > 0, "the agent put refused payloads' outlines in its tracks")
        check(all(REFUSED not in json.dumps(m) for m in metas.values()), "no refused payload's text in any metadata")

        data = tmp / "receiver"
        coco_out, yolo_out = tmp / "coco", tmp / "yolo"
        for out in (coco_out, yolo_out):
            shutil.rmtree(out, ignore_errors=True)
        split_args = ("--negatives", str(args.negatives), "--val", str(args.val))
        res, secs = export(tmp, data, coco_out, "--format", "coco", *split_args)
        coco_said = res.stdout
        print(res.stdout.strip())
        check(res.returncode == 0, f"coco export exit {res.returncode} {res.stderr.strip()[-500:]}")
        res, _ = export(tmp, data, yolo_out, "--format", "yolo", *split_args)
        check(res.returncode == 0, f"yolo export exit {res.returncode} {res.stderr.strip()[-500:]}")
        sets = {p.stem: COCO(str(p)) for p in sorted((coco_out / "annotations").glob("*.json"))}
        images = [(split, img, c.loadAnns(c.getAnnIds(imgIds=[img["id"]])))
                  for split, c in sets.items() for img in c.loadImgs(c.getImgIds())]
        print(f"exported         {len(images)} images in {secs:.1f} s: "
              + ", ".join(f"{s} {len(c.getImgIds())}" for s, c in sets.items()))

        # lost frames: each track frame is an image, an identical picture, or a stated near-duplicate
        exported = {(img["ldo_id"], img["t"]) for _, img, _ in images}
        pictures = {}
        for split, img, _ in images:
            gray = cv2.imread(str(coco_out / "images" / split / img["file_name"]), cv2.IMREAD_GRAYSCALE)
            pictures[(img["ldo_id"], img["t"])] = (gray, thumb(gray))
        planned = identical = near = lost = 0
        lost_lines = []
        for ldo, meta in metas.items():
            times = [t for t in (meta["detection"].get("track_frames") or {}).get("times", [])]
            planned += len(times)
            missing = [t for t in times if (ldo, t) not in exported]
            if not missing:
                continue
            grays = clip_frames(videos[ldo], missing)
            mine = sorted((t, v[1]) for (lid, t), v in pictures.items() if lid == ldo)
            for t in missing:
                th = thumb(grays[t])
                if any(np.abs(th - v[1]).mean() < 3 for v in pictures.values()):
                    identical += 1
                elif any(np.abs(th - kth).mean() < NEAR_GREY for kt, kth in mine if kt < t):
                    near += 1
                else:
                    lost += 1
                    lost_lines.append(f"{ldo} t={t}")
        check(lost == 0, f"frames lost: {lost} of {planned} track frames ({len(exported)} exported, {identical} "
                         f"identical to an exported picture, {near} near-duplicates) {lost_lines[:5]}")

        # every code zxing-cpp finds in an exported picture has a box there
        reads = covered = located = located_covered = 0
        ious: list[float] = []
        uncovered = []
        for (ldo, t), (gray, _) in pictures.items():
            img, anns = next((img, anns) for _, img, anns in images if img["ldo_id"] == ldo and img["t"] == t)
            for r in zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.QRCode, return_errors=True):
                if not r.valid and symbol_side(r) < MIN_SYMBOL_PX:
                    continue  # an error reported without an outline (at 0,0): nothing located
                box = zxing_box(r)
                best = max((iou(box, a["bbox"]) for a in anns), default=0.0)
                ok = best >= 0.5
                if r.valid:
                    reads += 1
                    covered += ok
                    if not ok:
                        uncovered.append(f"{img['file_name']} {r.text!r}")
                    cid_box = [a for a in anns if a["cid"] == r.text]
                    if cid_box:
                        ious.append(iou(box, cid_box[0]["bbox"]))
                else:
                    located += 1
                    located_covered += ok
        check(covered == reads > 0, f"codes zxing-cpp reads in exported pictures: {reads}, covered by a box {covered} "
                                    f"{uncovered[:5]}")
        print(f"      symbols zxing-cpp locates but cannot read: {located}, covered {located_covered}")
        if ious:
            print(f"      CID boxes against zxing-cpp's outline: IoU mean {np.mean(ious):.3f}, min {min(ious):.3f}")
        check(not ious or min(ious) >= 0.7, "every CID box on its code (IoU >= 0.7 with zxing-cpp's outline)")

        # background pictures
        background = [(split, img) for split, img, anns in images if img["background"]]
        with_codes = len(images) - len(background)
        ratio = len(background) / max(1, with_codes)
        check(abs(ratio - args.negatives) <= max(0.03, 0.3 * args.negatives),
              f"background pictures {len(background)} for {with_codes} with codes: ratio {ratio:.3f}, asked "
              f"{args.negatives:g}")
        dirty = [img["file_name"] for split, img in background
                 if any(r.valid or symbol_side(r) >= MIN_SYMBOL_PX
                        for r in zxingcpp.read_barcodes(pictures[(img["ldo_id"], img["t"])][0], return_errors=True))]
        check(not dirty, f"background pictures with a code zxing-cpp finds: {len(dirty)} {dirty[:3]}")

        # splits
        sides: dict[str, set[str]] = defaultdict(set)
        for split, img, _ in images:
            sides[img["ldo_id"]].add(split)
        both = [ldo for ldo, s in sides.items() if len(s) > 1]
        check(not both, f"clips on both sides of a split: {len(both)} of {len(sides)}")
        overlap_split = 0
        spans = {ldo: (m["device_id"], m["clip"].get("start_at"), m["clip"].get("duration_s"))
                 for ldo, m in metas.items()}

        for a, (da, sa, la) in spans.items():
            for b, (db, sb, lb) in spans.items():
                if a < b and da == db and sa and sb and a in sides and b in sides and sides[a] != sides[b]:
                    ta, tb = epoch(sa), epoch(sb)
                    same_hour = ta // 3600 == tb // 3600  # the stated cut: a chain stays within its hour
                    overlap_split += same_hour and ta < tb + (lb or 0) and tb < ta + (la or 0)
        check(overlap_split == 0, f"overlapping clips of one device, starting in one hour, on different sides: "
                                  f"{overlap_split}")

        # device filters, by the id as sent
        per_device = Counter(img["device_id"] for _, img, _ in images)
        for device in DEVICES:
            out = tmp / f"device-{list(DEVICES).index(device)}"
            shutil.rmtree(out, ignore_errors=True)
            res, _ = export(tmp, data, out, "--format", "coco", "--device-id", device, *split_args)
            got = [json.loads(p.read_text()) for p in (out / "annotations").glob("*.json")]
            n = sum(len(g["images"]) for g in got)
            ids = {i["device_id"] for g in got for i in g["images"]}
            check(res.returncode == 0 and n == per_device[device] and ids == {device},
                  f"--device-id {device!r}: {n} images (the whole set has {per_device[device]})")

        # the field's readers
        check(True, f"pycocotools loads {len(sets)} splits: {sum(len(c.getAnnIds()) for c in sets.values())} "
                    "annotations")
        try:
            from torchvision.datasets import CocoDetection
        except ImportError:
            print("skip  torchvision's CocoDetection: torchvision is not installed")
        else:
            n = 0
            for split in sets:
                ds = CocoDetection(str(coco_out / "images" / split), str(coco_out / "annotations" / f"{split}.json"))
                n += sum(1 for i in range(len(ds)) if ds[i][0] is not None)
            check(n == len(images), f"torchvision's CocoDetection reads {n} of {len(images)} images")
        try:
            from ultralytics.data.dataset import YOLODataset
            from ultralytics.data.utils import check_det_dataset
        except ImportError:
            print("skip  ultralytics' dataset check: ultralytics is not installed")
        else:
            moved = tmp / "yolo-moved"
            shutil.rmtree(moved, ignore_errors=True)
            shutil.copytree(yolo_out, moved)
            cfg = check_det_dataset(str(moved / "data.yaml"))
            n = 0
            for split in {cfg[k] for k in ("train", "val", "test") if cfg.get(k)}:
                n += len(YOLODataset(img_path=split, data=cfg, task="detect").labels)
            jpgs = len(list((moved / "images").rglob("*.jpg")))
            check(n == jpgs, f"ultralytics' dataset check on the moved set: {n} of {jpgs} images with valid labels")
            # val on its own pictures whenever a group drew val; else the export said so
            check(cfg["val"] != cfg["train"] if "val" in sets else "drew val" in coco_said,
                  "data.yaml validates on val's own pictures" if "val" in sets else
                  "no group of this replay drew val (few devices, each one chain of clips): the export says so")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("PASS" if not check.misses else f"FAIL: {len(check.misses)} checks missed")
    return 0 if not check.misses else 1


if __name__ == "__main__":
    sys.exit(main())
