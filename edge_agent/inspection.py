"""What a technician sees of one frame: the codes outlined, pixels per QR module, sharpness,
exposure and the advice that follows from them.

Shared by `snapshot`/`tune` (a frame they decode and run the daemon's detector on) and the live
view (a frame the detect stage already analysed, so the picture costs no second detection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from edge_agent.config import Config
from edge_agent.delivery.cid import CidValidator, escape_payload, payload_text
from edge_agent.picture import code_figures, exposure, sharpness

if TYPE_CHECKING:
    from edge_agent.pipeline.qr_detector import Detector, DetectResult

# BGR
GREEN, RED, BLUE, ORANGE = (40, 200, 40), (40, 40, 230), (230, 120, 30), (0, 150, 255)
# zxing-cpp reads QR codes reliably from about 2 px a module; below 3 it starts to miss blurred ones
MIN_PX_PER_MODULE = 3.0
# variance of the Laplacian of the code area: sharp labels score in the hundreds, blurred ones < ~50
MIN_SHARPNESS = 50.0
# ... and a label in focus under good light scores this or more (the samples' labels: 2000-2400)
GOOD_SHARPNESS = 300.0


@dataclass
class CodeReport:
    text: str
    valid: bool
    polygon: list[tuple[int, int]]
    modules: int | None
    px_per_module: float | None
    sharpness: float


@dataclass
class Report:
    source: str
    t: float
    width: int
    height: int
    mean: float
    clipped_dark: float
    clipped_bright: float
    sharpness: float
    detect_ms: float
    codes: list[CodeReport] = field(default_factory=list)
    # symbols located but not read (no-reads in the making): outlined orange
    unread: list[list[tuple[int, int]]] = field(default_factory=list)

    def advice(self) -> list[str]:
        out = []
        if not self.codes:
            out.append("no code found: aim the camera at a label, check focus and light, or widen detector.roi")
        for c in self.codes:
            if c.px_per_module is not None and c.px_per_module < MIN_PX_PER_MODULE:
                out.append(f"code is {c.px_per_module:.1f} px/module: move closer, zoom in or raise the resolution "
                           f"(aim for >= {MIN_PX_PER_MODULE:g})")
            if c.sharpness < MIN_SHARPNESS:
                out.append(f"code is blurry (Laplacian variance {c.sharpness:.0f}): focus the lens or shorten the "
                           "exposure to freeze motion")
            if not c.valid:
                out.append(f"payload {escape_payload(c.text)} is not a valid CID (detector.cid_pattern)")
        if self.unread:
            out.append(f"{len(self.unread)} code(s) seen but not read: check the label (torn, smeared, glare) "
                       "and focus")
        if self.mean < 50:
            out.append(f"image is dark (mean {self.mean:.0f}/255): add light or raise exposure/gain")
        elif self.mean > 205:
            out.append(f"image is bright (mean {self.mean:.0f}/255): lower exposure or gain")
        if self.clipped_bright > 0.05:
            out.append(f"{self.clipped_bright:.0%} of the image is blown out: glare on labels hides modules")
        if not out:
            out.append("looks good")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "t": round(self.t, 3), "width": self.width, "height": self.height,
                "mean": round(self.mean, 1), "clipped_dark": round(self.clipped_dark, 4),
                "clipped_bright": round(self.clipped_bright, 4), "sharpness": round(self.sharpness, 1),
                "detect_ms": round(self.detect_ms, 2),
                "codes": [{"text": escape_payload(c.text), "valid": c.valid, "modules": c.modules,
                           "px_per_module": c.px_per_module, "sharpness": round(c.sharpness, 1),
                           "sharpness_scale": sharpness_scale(c.sharpness)} for c in self.codes],
                "unread": len(self.unread), "advice": self.advice()}


def sharpness_scale(value: float) -> str:
    """A code's sharpness in words, with the scale, so a number means something to a technician. The
    variance of the Laplacian of the code area measures edge contrast per pixel: a printed QR code in
    focus scores in the hundreds or more at any resolution, a blurred one under MIN_SHARPNESS."""
    word = "blurry" if value < MIN_SHARPNESS else "sharp" if value >= GOOD_SHARPNESS else "fair"
    return f"{word}: under {MIN_SHARPNESS:g} blurry, {GOOD_SHARPNESS:g} and over sharp"


def report_from(gray: np.ndarray, result: DetectResult, validator: CidValidator, source: str, t: float,
                detect_ms: float) -> Report:
    """The figures for a frame the detector has already seen (`result` is what it found there)."""
    h, w = gray.shape
    rep = Report(source, t, w, h, *exposure(gray), sharpness(gray), detect_ms)
    for det in result:
        ppm, sharp = code_figures(gray, det.polygon, det.modules)
        rep.codes.append(CodeReport(payload_text(det.payload), validator.from_payload(det.payload) is not None,
                                    list(det.polygon), det.modules, ppm, sharp))
    rep.unread = [list(u.polygon) for u in getattr(result, "unread", ())]
    return rep


class ValidatorSource(Protocol):
    """What `analyse` needs of the agent (`app.Agent`): its CID rule as configured now."""

    def validator(self) -> CidValidator: ...


def analyse(gray: np.ndarray, agent: ValidatorSource, detector: Detector, source: str, t: float) -> Report:
    """The daemon's view of one frame, with the figures a technician needs: the daemon's own detector
    (decoder, options, region of interest, downscale) and its one CID rule, so what this shows is what
    the daemon reads."""
    from edge_agent.capture.media import GrayFrame

    found = detector.detect(GrayFrame(np.ascontiguousarray(gray), t, 0.0))
    return report_from(gray, found, agent.validator(), source, t, detector.last_ms)


def annotate(bgr: np.ndarray, rep: Report, cfg: Config) -> np.ndarray:
    img = bgr.copy()
    h, w = img.shape[:2]
    thick = max(2, w // 400)
    scale = max(0.5, w / 1600)
    roi = cfg.detector.roi
    if roi is not None:
        cv2.rectangle(img, (int(roi.left * w), int(roi.top * h)), (int(roi.right * w) - 1, int(roi.bottom * h) - 1),
                      BLUE, thick)
    for poly in rep.unread:
        cv2.polylines(img, [np.array(poly, np.int32)], True, ORANGE, thick + 1)
        x, y = min(q[0] for q in poly), max(20, min(q[1] for q in poly) - 10)
        cv2.putText(img, "NO READ", (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 3)
        cv2.putText(img, "NO READ", (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, ORANGE, thick)
    for c in rep.codes:
        color = GREEN if c.valid else RED
        cv2.polylines(img, [np.array(c.polygon, np.int32)], True, color, thick + 1)
        label = c.text if c.valid else "REJECTED " + escape_payload(c.text, 40)
        if c.px_per_module:
            label += f"  {c.px_per_module:.1f} px/module"
        x, y = min(q[0] for q in c.polygon), max(0, min(q[1] for q in c.polygon) - 10)
        cv2.putText(img, label, (x, max(20, y)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 3)
        cv2.putText(img, label, (x, max(20, y)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick)
    legend = (f"mean {rep.mean:.0f}  sharpness {rep.sharpness:.0f}  detect {rep.detect_ms:.1f} ms  "
              f"green: CID  red: rejected  orange: no read  blue: ROI")
    cv2.rectangle(img, (0, h - int(40 * scale)), (w, h), (0, 0, 0), -1)
    cv2.putText(img, legend, (10, h - int(12 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, (255, 255, 255), 1)
    return img
