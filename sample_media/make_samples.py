"""Make the sample videos and their manifest: synthetic conveyor footage with QR-labelled boxes.

    python sample_media/make_samples.py            # regenerate, then verify
    python sample_media/make_samples.py --verify-only

Deterministic (seeded). A textured belt runs left to right; cardboard boxes ride it, each with a
white label carrying a QR code printed at a slight angle. The frames get motion blur along the
belt, sensor noise, a slow lighting drift and a vignette, and are encoded as H.264 (libx264,
yuv420p, 30 fps, a keyframe every second exactly, as the docs recommend for cameras).

For each label the manifest gives the window in which its code is fully inside the frame
(`first_t`..`last_t`, seconds of video), computed from the geometry. After writing, every file
is decoded and every 3rd frame searched with zxing-cpp: the set of payloads found must equal the
manifest's, each found only inside its window.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import zxingcpp

HERE = Path(__file__).resolve().parent
FPS = 30
CID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


@dataclass
class Box:
    payload: str | None  # None: a box with no label
    first_t: float  # when the code is fully in view (its left edge crosses x=0)
    lane_y: float  # vertical centre of the box, fraction of the frame height
    size: tuple[float, float] = (0.26, 0.42)  # box w, h as fractions of frame height
    angle_deg: float = 0.0  # label tilt
    extra_blur: int = 0  # additional horizontal blur for this box, px (a box sliding on the belt)
    module_px: int = 5  # QR module size in pixels at this resolution


@dataclass
class Video:
    file: str
    width: int
    height: int
    duration_s: float
    description: str
    boxes: list[Box]
    crf: int = 30
    drift: float = 0.25  # relative amplitude of the lighting drift


def qr(payload: str, module_px: int) -> np.ndarray:
    bc = zxingcpp.create_barcode(payload, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
    img = np.array(bc.to_image(scale=1, add_quiet_zones=False))
    img = cv2.resize(img, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)
    return img


class Renderer:
    """Draws one video's frames. Boxes move at the belt speed; geometry is exact so the manifest's
    windows come from the same numbers that place the pixels."""

    def __init__(self, v: Video, seed: int):
        self.v = v
        rng = np.random.default_rng(seed)
        self.rng = rng
        w, h = v.width, v.height
        self.speed = w / 4.0  # px/s: a label crosses the frame in about 4 s
        # belt texture, twice the frame width so it can scroll
        belt = rng.normal(120, 18, (h, 2 * w)).astype(np.float32)
        belt = cv2.GaussianBlur(belt, (0, 0), 3)
        for x in range(0, 2 * w, max(8, w // 24)):  # belt seams
            belt[:, x : x + 3] -= 35
        self.belt = np.clip(belt, 0, 255).astype(np.uint8)
        self.belt_bgr = cv2.cvtColor(self.belt, cv2.COLOR_GRAY2BGR)
        self.belt_bgr[:, :, 0] = np.clip(self.belt_bgr[:, :, 0].astype(np.int16) + 8, 0, 255)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
        self.vignette = (1.0 - 0.22 * r**2).clip(0.6, 1.0)[..., None]
        self.sprites = [self._sprite(b) for b in v.boxes]

    def _sprite(self, b: Box) -> dict:
        h = self.v.height
        bw, bh = int(b.size[0] * h), int(b.size[1] * h)
        box = np.zeros((bh, bw, 3), np.uint8)
        box[:] = (70, 128, 182)  # cardboard, BGR
        noise = self.rng.normal(0, 6, (bh, bw, 1))
        box = np.clip(box + noise, 0, 255).astype(np.uint8)
        cv2.rectangle(box, (0, 0), (bw - 1, bh - 1), (45, 90, 130), max(2, h // 200))
        cv2.line(box, (0, bh // 2), (bw, bh // 2), (95, 150, 200), max(1, h // 300))  # tape
        code_off = (0, 0)
        code_size = 0
        corners: list[tuple[float, float]] = []
        if b.payload is not None:
            code = qr(b.payload, b.module_px)
            quiet = 3 * b.module_px
            label = np.full((code.shape[0] + 2 * quiet, code.shape[1] + 2 * quiet), 245, np.uint8)
            label[quiet : quiet + code.shape[0], quiet : quiet + code.shape[1]] = code
            label = cv2.cvtColor(label, cv2.COLOR_GRAY2BGR)
            if b.angle_deg:
                m = cv2.getRotationMatrix2D((label.shape[1] / 2, label.shape[0] / 2), b.angle_deg, 1.0)
                label = cv2.warpAffine(label, m, (label.shape[1], label.shape[0]), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=(245, 245, 245))
            lh, lw = label.shape[:2]
            if lw > bw - 8 or lh > bh - 8:
                raise ValueError(f"label of {b.payload!r} does not fit its box: enlarge the box")
            ox, oy = (bw - lw) // 2, (bh - lh) // 2
            box[oy : oy + lh, ox : ox + lw] = label
            # the code's own corners (quiet zone excluded), in box pixels: where a decoder outlines it
            n = code.shape[0]
            square = np.array([[quiet, quiet], [quiet + n, quiet], [quiet + n, quiet + n], [quiet, quiet + n]], float)
            if b.angle_deg:
                square = square @ m[:, :2].T + m[:, 2]
            corners = [(float(x) + ox, float(y) + oy) for x, y in square]
            # the rotated code's horizontal extent, for the visibility window
            a = math.radians(b.angle_deg)
            half = code.shape[1] / 2 * (abs(math.cos(a)) + abs(math.sin(a)))
            code_size = int(math.ceil(2 * half))
            code_off = (ox + lw // 2 - code_size // 2, oy)
        return {"img": box, "code_x": code_off[0], "code_w": code_size, "corners": corners}

    def box_x(self, i: int, t: float) -> float:
        """Left edge of box i at time t: its code's left edge crosses x=0 at first_t."""
        b, s = self.v.boxes[i], self.sprites[i]
        return self.speed * (t - b.first_t) - s["code_x"]

    def box_y(self, i: int) -> int:
        return int(self.v.boxes[i].lane_y * self.v.height - self.sprites[i]["img"].shape[0] / 2)

    def code_corners(self, i: int, t: float) -> list[tuple[float, float]]:
        """Where box i's QR code is drawn at time t: its four corners (top-left, top-right,
        bottom-right, bottom-left of the symbol before the tilt) in frame pixels."""
        x, y = int(round(self.box_x(i, t))), self.box_y(i)
        return [(cx + x, cy + y) for cx, cy in self.sprites[i]["corners"]]

    def window(self, i: int) -> tuple[float, float]:
        s = self.sprites[i]
        b = self.v.boxes[i]
        return b.first_t, b.first_t + (self.v.width - s["code_w"]) / self.speed

    def frame(self, n: int) -> np.ndarray:
        v = self.v
        t = n / FPS
        w, h = v.width, v.height
        shift = int(self.speed * t) % w
        img = self.belt_bgr[:, w - shift : 2 * w - shift].copy()
        for i, (b, s) in enumerate(zip(v.boxes, self.sprites, strict=True)):
            x = int(round(self.box_x(i, t)))
            bh, bw = s["img"].shape[:2]
            y = self.box_y(i)
            x0, x1 = max(0, x), min(w, x + bw)
            if x1 <= x0:
                continue
            patch = s["img"][:, x0 - x : x1 - x]
            if b.extra_blur:
                patch = cv2.blur(patch, (b.extra_blur, 1))
            # a soft shadow under the box
            img[y + bh : min(h, y + bh + h // 60), x0:x1] = (img[y + bh : min(h, y + bh + h // 60), x0:x1] * 0.6)
            img[y : y + bh, x0:x1] = patch
        # motion blur along the belt: the exposure integrates ~half a frame of motion
        k = max(1, int(self.speed / FPS * 0.5))
        img = cv2.blur(img, (k, 1))
        gain = 1.0 + v.drift * math.sin(2 * math.pi * t / 9.0) - 0.1 * (t / v.duration_s)
        out = img.astype(np.float32) * self.vignette * gain + self.rng.normal(0, 2.5, img.shape).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)


def write_h264(path: Path, frames: Iterable[np.ndarray], width: int, height: int, crf: int, fmt: str) -> None:
    """H.264 in MP4 as the samples are made: a keyframe every second exactly (no scene-cut keyframes),
    B-frames as cameras often use them, +faststart. `fmt` is the arrays' pixel format (bgr24, gray)."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = FPS
        s.codec_context.options = {"preset": "veryfast", "crf": str(crf), "keyint_min": str(FPS),
                                   "sc_threshold": "0", "bf": "2"}
        for n, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format=fmt).reformat(format="yuv420p")
            frame.pts = n
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def encode(v: Video, path: Path, seed: int) -> list[dict]:
    r = Renderer(v, seed)
    write_h264(path, (r.frame(n) for n in range(round(v.duration_s * FPS))), v.width, v.height, v.crf, "bgr24")
    apps = []
    for i, b in enumerate(v.boxes):
        if b.payload is None:
            continue
        a, z = r.window(i)
        apps.append({"payload": b.payload, "valid": bool(_valid(b.payload)), "first_t": round(a, 3),
                     "last_t": round(z, 3), "px_per_module": b.module_px})
    return apps


def _valid(payload: str) -> bool:
    import re

    return bool(re.fullmatch(CID_PATTERN, payload)) and payload.isprintable()


VIDEOS = [
    Video(
        "conveyor_720p30.mp4", 1280, 720, 21.0,
        "720p30 conveyor: three labelled boxes one at a time, then an unlabelled box (a stretch with no "
        "code), then a fourth labelled box. Motion blur, noise, lighting drift.",
        [
            Box("CID-7F3A9C21", 3.2, 0.5, angle_deg=4),
            Box("lot42.box:0007", 7.8, 0.45, angle_deg=-6),
            Box(None, 11.5, 0.5),
            Box("CID-00B15E88", 14.2, 0.55, angle_deg=2),
        ],
    ),
    Video(
        "conveyor_1080p30.mp4", 1920, 1080, 20.0,
        "1080p30 conveyor in two lanes: two labels in view at once (different CIDs), one box sliding with "
        "strong motion blur, a strong lighting drift.",
        [
            Box("CID-A1B2C3D4", 3.1, 0.3, size=(0.3, 0.34), angle_deg=-3, module_px=6),
            Box("CID-E5F6A7B8", 3.9, 0.72, size=(0.3, 0.34), angle_deg=5, module_px=6),
            Box("line2.pallet:0451", 9.0, 0.5, size=(0.34, 0.4), angle_deg=0, extra_blur=5, module_px=6),
            Box("CID-FFEE0099", 13.0, 0.45, size=(0.3, 0.34), angle_deg=-8, module_px=6),
        ],
        crf=31, drift=0.35,
    ),
    Video(
        "invalid_payload_720p30.mp4", 1280, 720, 22.0,
        "720p30 conveyor with hostile labels: two valid CIDs and three payloads that are not valid CIDs "
        "(path traversal, shell injection, header injection with a newline).",
        [
            Box("CID-5A5A5A5A", 3.1, 0.5),
            Box("../../etc/passwd", 6.4, 0.5),
            Box("A1;rm -rf /", 9.7, 0.5),
            Box("CID-OK\nX-Injected: 1", 13.0, 0.5),
            Box("CID-C0FFEE01", 15.5, 0.5, angle_deg=-5),
        ],
    ),
]


def verify(out_dir: Path, manifest: dict) -> bool:
    ok = True
    total = 0
    print(f"{'file':<28} {'MB':>5}  payload (frames found / searched in window)")
    for entry in manifest["videos"]:
        path = out_dir / entry["file"]
        size = path.stat().st_size
        total += size
        found: dict[str, list[float]] = {}
        with av.open(str(path)) as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            for n, frame in enumerate(c.decode(v)):
                if n % 3:
                    continue
                t = n / FPS
                for bc in zxingcpp.read_barcodes(frame.to_ndarray(format="gray"),
                                                 formats=zxingcpp.BarcodeFormat.QRCode):
                    found.setdefault(bc.text, []).append(t)
        wanted = {a["payload"]: a for a in entry["appearances"]}
        print(f"{entry['file']:<28} {size / 1e6:5.2f}")
        for payload, a in wanted.items():
            times = found.get(payload, [])
            searched = len([n for n in range(0, round(entry["duration_s"] * FPS), 3)
                            if a["first_t"] <= n / FPS <= a["last_t"]])
            outside = [t for t in times if not (a["first_t"] - 0.2 <= t <= a["last_t"] + 0.2)]
            print(f"{'':<36}{payload!r:<26} {len(times):3d} / {searched}"
                  + (f"  OUTSIDE WINDOW at {outside}" if outside else ""))
            if len(times) < 5 or outside:
                ok = False
        extra = set(found) - set(wanted)
        if extra:
            print(f"{'':<36}unexpected payloads: {sorted(extra)}")
            ok = False
    print(f"total {total / 1e6:.2f} MB (limit 10 MB)")
    return ok and total < 10e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--verify-only", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    if not args.verify_only:
        videos = []
        for seed, v in enumerate(VIDEOS):
            apps = encode(v, args.out / v.file, seed)
            videos.append({
                "file": v.file, "description": v.description, "width": v.width, "height": v.height, "fps": FPS,
                "duration_s": v.duration_s, "keyframe_interval_s": 1.0,
                "cids": [a["payload"] for a in apps if a["valid"]],
                "rejected_payloads": [a["payload"] for a in apps if not a["valid"]],
                "appearances": apps,
            })
            print(f"wrote {v.file}", file=sys.stderr)
        manifest = {"generator": "sample_media/make_samples.py", "videos": videos}
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    manifest = json.loads(manifest_path.read_text())
    if not verify(args.out, manifest):
        print("verification FAILED", file=sys.stderr)
        return 1
    print("verification passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
