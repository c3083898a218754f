"""Make the hard-code sample: QR labels that defeat a plain decoder, one kind of trouble per category.

    python sample_media/make_hard_codes.py --out /tmp/hard          # video + manifest into /tmp/hard
    python sample_media/make_hard_codes.py --out /tmp/hard --only inverted,small

Deterministic (seeded). Each label is shown alone for a little over a second on a still, textured
background at 1280x720, drifting slowly to the right (so each analysed frame sees it at a new
sub-pixel phase), then a short empty gap. Categories, each in three levels of severity:

- inverted: light-on-dark marks, as laser-etched on metal parts
- small: 2, 2.5 and 3 pixels per module
- motion_blur: a horizontal smear of 6, 8 and 10 px at 5 px per module (up to two modules)
- perspective: the label tilted away from the camera (foreshortened, keystoned)
- low_contrast: dark modules only 40, 28 or 20 grey levels below the light ones
- glare: a saturated specular highlight over part of the code
- damaged_corner: a corner torn off (the corner without a finder pattern, then one with)

The video is H.264 (libx264, yuv420p, 30 fps, a keyframe a second), so the codec's own losses come
on top. The manifest (`hard_codes.json` beside the video) lists per category the expected CIDs and,
per label, its window in seconds and its module size. Nothing here is tuned to any decoder: the
levels are what a line camera meets.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import zxingcpp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_samples import FPS, write_h264  # noqa: E402  (the samples' encoding, shared)

WIDTH, HEIGHT = 1280, 720
SHOW_S = 1.2  # each label in view
GAP_S = 1.0  # empty frames between labels (parts come one by one)
LEAD_S = 0.5  # empty frames before the first label
DRIFT_PX_S = 40.0
SS = 4  # supersampling of the label rendering
VIDEO = "hard_codes_720p30.mp4"
MANIFEST = "hard_codes.json"


@dataclass(frozen=True)
class Label:
    category: str
    payload: str
    module_px: float = 5.0
    dark: int = 35  # grey level of dark modules (of the marks, for inverted)
    light: int = 225  # grey level of the light ground
    inverted: bool = False
    blur_px: int = 0  # horizontal motion smear
    tilt: tuple[float, float] = (0.0, 0.0)  # (horizontal, vertical) foreshortening: 0 none, 0.5 strong
    glare: float = 0.0  # radius of the highlight as a fraction of the code size
    damage: tuple[str, float] | None = None  # (corner "br"|"tr", torn fraction of the side)


LABELS: list[Label] = [
    Label("inverted", "HC-INV-1", dark=40, light=200, inverted=True),
    Label("inverted", "HC-INV-2", module_px=4, dark=60, light=170, inverted=True),
    Label("inverted", "HC-INV-3", module_px=3.5, dark=70, light=140, inverted=True, blur_px=3),
    Label("small", "HC-SMALL-1", module_px=3.0),
    Label("small", "HC-SMALL-2", module_px=2.5),
    Label("small", "HC-SMALL-3", module_px=2.0),
    Label("motion_blur", "HC-BLUR-1", blur_px=6),
    Label("motion_blur", "HC-BLUR-2", blur_px=8),
    Label("motion_blur", "HC-BLUR-3", blur_px=10),
    Label("perspective", "HC-PERSP-1", tilt=(0.3, 0.0)),
    Label("perspective", "HC-PERSP-2", tilt=(0.45, 0.2)),
    Label("perspective", "HC-PERSP-3", module_px=4, tilt=(0.55, 0.35)),
    Label("low_contrast", "HC-LOWC-1", dark=170, light=210),
    Label("low_contrast", "HC-LOWC-2", dark=150, light=178, module_px=4),
    Label("low_contrast", "HC-LOWC-3", dark=120, light=140, module_px=4),
    Label("glare", "HC-GLARE-1", glare=0.1),
    Label("glare", "HC-GLARE-2", glare=0.15),
    Label("glare", "HC-GLARE-3", glare=0.2, module_px=4),
    Label("damaged_corner", "HC-DMG-1", damage=("br", 0.2)),
    Label("damaged_corner", "HC-DMG-2", damage=("br", 0.3)),
    Label("damaged_corner", "HC-DMG-3", damage=("tr", 0.22)),
]
CATEGORIES = list(dict.fromkeys(lb.category for lb in LABELS))


def modules(payload: str) -> np.ndarray:
    """The symbol as one value per module (1 light, 0 dark) with a 4-module quiet zone, EC level M."""
    bc = zxingcpp.create_barcode(payload, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
    img = np.array(bc.to_image(scale=1, add_quiet_zones=False))
    return np.pad((img > 127).astype(np.float32), 4, constant_values=1.0)


def _quad(lb: Label, n: int, cx: float, cy: float) -> np.ndarray:
    """Where the symbol's four corners land in the frame: a square of n*module_px, foreshortened."""
    s = n * lb.module_px
    h, v = lb.tilt
    # tilt about the vertical axis: the right side recedes (shorter, narrower); about the horizontal: the top
    right_scale = 1.0 - h
    top_scale = 1.0 - v
    w_eff = s * (1 - h / 2) * (1 - v / 3)
    hh = s / 2
    left_h, right_h = hh, hh * right_scale
    tl = (cx - w_eff / 2 + s * v / 4 * (1 - top_scale), cy - left_h * (top_scale if v else 1))
    tr = (cx + w_eff / 2 - s * v / 4 * (1 - top_scale), cy - right_h * (top_scale if v else 1))
    br = (cx + w_eff / 2, cy + right_h)
    bl = (cx - w_eff / 2, cy + left_h)
    return np.array([tl, tr, br, bl], np.float32)


class Renderer:
    def __init__(self, labels: list[Label], seed: int = 11):
        rng = np.random.default_rng(seed)
        self.rng = rng
        bg = rng.normal(118, 22, (HEIGHT, WIDTH)).astype(np.float32)
        self.background = cv2.GaussianBlur(bg, (0, 0), 6)
        self.labels = labels
        self.mods = [modules(lb.payload) for lb in labels]
        # sensor noise: a few precomputed fields in turn (drawing a fresh one per frame is the slow part)
        self.noise = [rng.normal(0, 1.5, (HEIGHT, WIDTH)).astype(np.float32) for _ in range(7)]

    def start(self, i: int) -> float:
        return LEAD_S + i * (SHOW_S + GAP_S)

    @property
    def duration_s(self) -> float:
        return self.start(len(self.labels)) + LEAD_S

    def frame(self, n: int) -> np.ndarray:
        t = n / FPS
        img = self.background.copy()
        for i, lb in enumerate(self.labels):
            a = self.start(i)
            if a <= t < a + SHOW_S:
                self._draw(img, lb, self.mods[i], t - a)
        img += self.noise[n % len(self.noise)]
        return np.clip(img, 0, 255).astype(np.uint8)

    def _draw(self, img: np.ndarray, lb: Label, mods: np.ndarray, dt: float) -> None:
        n = mods.shape[0]
        mods = mods.copy()
        torn = np.zeros_like(mods)
        if lb.damage:
            corner, frac = lb.damage
            k = int(round(n * frac))
            # a torn corner: a triangle of the label gone, the background shows through
            tri = np.array([[n, n], [n - 2 * k, n], [n, n - 2 * k]], np.int32) if corner == "br" else \
                np.array([[n, 0], [n - 2 * k, 0], [n, 2 * k]], np.int32)
            cv2.fillPoly(torn, [tri], 1.0)
        ink = lb.light if lb.inverted else lb.dark
        ground = lb.dark if lb.inverted else lb.light
        # inverted: the dark modules are the bright marks
        values = np.where(mods > 0.5, ground, ink).astype(np.float32)
        cx = WIDTH / 2 - 120 + DRIFT_PX_S * dt
        cy = HEIGHT / 2
        quad = _quad(lb, n, cx, cy)
        x0, y0 = np.floor(quad.min(0)).astype(int) - 4
        x1, y1 = np.ceil(quad.max(0)).astype(int) + 4
        src = np.array([[0, 0], [n, 0], [n, n], [0, n]], np.float32)
        dst = ((quad - [x0, y0]) * SS).astype(np.float32)
        m = cv2.getPerspectiveTransform(src, dst)
        size = ((x1 - x0) * SS, (y1 - y0) * SS)
        big = cv2.warpPerspective(values, m, size, flags=cv2.INTER_NEAREST, borderValue=-1)
        gone = cv2.warpPerspective(torn, m, size, flags=cv2.INTER_NEAREST, borderValue=1) > 0.5
        inside = big >= 0
        patch = img[y0:y1, x0:x1]
        bg_big = cv2.resize(patch, size, interpolation=cv2.INTER_NEAREST)
        comp = np.where(inside & ~gone, big, bg_big)
        small = cv2.resize(comp, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        if lb.glare:
            s = n * lb.module_px
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            gx, gy = cx - s * 0.1, cy - s * 0.12
            r = lb.glare * s
            small = small + 255 * np.exp(-(((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * (r / 1.6) ** 2)))
            small = np.minimum(small, 255)
        img[y0:y1, x0:x1] = small
        if lb.blur_px:
            pad = lb.blur_px
            xa, xb = max(0, x0 - pad), min(WIDTH, x1 + pad)
            img[y0:y1, xa:xb] = cv2.blur(img[y0:y1, xa:xb], (lb.blur_px, 1))


def make(out_dir: Path, only: set[str] | None = None, crf: int = 26) -> dict:
    """Write the video and its manifest into out_dir; returns the manifest."""
    labels = [lb for lb in LABELS if only is None or lb.category in only]
    r = Renderer(labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / VIDEO
    write_h264(path, (r.frame(n) for n in range(round(r.duration_s * FPS))), WIDTH, HEIGHT, crf, "gray")
    categories: dict[str, list[str]] = {}
    appearances = []
    for i, lb in enumerate(labels):
        categories.setdefault(lb.category, []).append(lb.payload)
        a = r.start(i)
        appearances.append({"payload": lb.payload, "category": lb.category, "first_t": round(a, 3),
                            "last_t": round(a + SHOW_S - 1 / FPS, 3), "px_per_module": lb.module_px})
    manifest = {"generator": "sample_media/make_hard_codes.py", "file": VIDEO, "width": WIDTH, "height": HEIGHT,
                "fps": FPS, "duration_s": round(r.duration_s, 3), "categories": categories,
                "appearances": appearances}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the video and hard_codes.json")
    ap.add_argument("--only", help="comma-separated categories (default: all)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(CATEGORIES):
        print(f"make_hard_codes: unknown categories {sorted(only - set(CATEGORIES))}; "
              f"known: {', '.join(CATEGORIES)}", file=sys.stderr)
        return 2
    m = make(args.out, only)
    size = (args.out / VIDEO).stat().st_size
    print(f"wrote {args.out / VIDEO} ({size / 1e3:.0f} kB, {m['duration_s']} s, {len(m['appearances'])} labels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
