"""`edge-agent snapshot` and `edge-agent tune`: a look through the camera for the technician.

snapshot: one frame from the configured source, the detector run on it, an annotated JPEG (code
outlines, decoded text, rejected payloads in red, the region of interest) and the figures that
decide whether codes will be read: pixels per QR module, sharpness (variance of the Laplacian),
exposure (mean, clipped share) and decode time, with advice lines. tune: the same figures every
second, for focusing a lens and aiming a camera over SSH.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.commands.common import add_config_arg, load_config_or_exit
from edge_agent.config import Config
from edge_agent.delivery.cid import CidValidator, escape_payload
from edge_agent.logs import setup_logging

GREEN, RED, BLUE = (40, 200, 40), (40, 40, 230), (230, 120, 30)
# zxing-cpp reads QR codes reliably from about 2 px a module; below 3 it starts to miss blurred ones
MIN_PX_PER_MODULE = 3.0
# variance of the Laplacian of the code area: sharp labels score in the hundreds, blurred ones < ~50
MIN_SHARPNESS = 50.0


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
    decode_ms: float
    codes: list[CodeReport] = field(default_factory=list)

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
        if self.mean < 50:
            out.append(f"image is dark (mean {self.mean:.0f}/255): add light or raise exposure/gain")
        elif self.mean > 205:
            out.append(f"image is bright (mean {self.mean:.0f}/255): lower exposure or gain")
        if self.clipped_bright > 0.05:
            out.append(f"{self.clipped_bright:.0%} of the image is blown out: glare on labels hides modules")
        if not out:
            out.append("looks good")
        return out


def sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var()) if gray.size else 0.0


def analyse(gray: np.ndarray, cfg: Config, source: str, t: float) -> Report:
    """The detector's view of one frame, with the figures a technician needs."""
    import zxingcpp

    h, w = gray.shape
    x0 = y0 = 0
    region = gray
    roi = cfg.detector.roi
    if roi is not None:
        x0, y0 = int(roi.left * w), int(roi.top * h)
        region = gray[y0 : int(roi.bottom * h), x0 : int(roi.right * w)]
    started = time.perf_counter()
    found = zxingcpp.read_barcodes(np.ascontiguousarray(region), formats=zxingcpp.BarcodeFormat.QRCode)
    ms = (time.perf_counter() - started) * 1000
    validator = CidValidator(cfg.detector.cid_pattern, cfg.detector.cid_max_length)
    rep = Report(source, t, w, h, float(gray.mean()), float((gray < 5).mean()), float((gray > 250).mean()),
                 sharpness(gray), ms)
    for bc in found:
        p = bc.position
        poly = [(pt.x + x0, pt.y + y0) for pt in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)]
        version = (bc.extra or {}).get("Version") if isinstance(bc.extra, dict) else None
        modules = 17 + 4 * int(version) if version and str(version).isdigit() else None
        side = np.mean([math.dist(poly[i], poly[(i + 1) % 4]) for i in range(4)])
        xs, ys = [q[0] for q in poly], [q[1] for q in poly]
        crop = gray[max(0, min(ys)) : max(ys), max(0, min(xs)) : max(xs)]
        try:
            text = bytes(bc.bytes).decode("utf-8")
        except UnicodeDecodeError:
            text = bytes(bc.bytes).decode("latin-1")
        rep.codes.append(CodeReport(text, validator.check(text) is not None, poly, modules,
                                    round(side / modules, 2) if modules else None, sharpness(crop)))
    return rep


def annotate(bgr: np.ndarray, rep: Report, cfg: Config) -> np.ndarray:
    img = bgr.copy()
    h, w = img.shape[:2]
    thick = max(2, w // 400)
    scale = max(0.5, w / 1600)
    roi = cfg.detector.roi
    if roi is not None:
        cv2.rectangle(img, (int(roi.left * w), int(roi.top * h)), (int(roi.right * w) - 1, int(roi.bottom * h) - 1),
                      BLUE, thick)
    for c in rep.codes:
        color = GREEN if c.valid else RED
        cv2.polylines(img, [np.array(c.polygon, np.int32)], True, color, thick + 1)
        label = c.text if c.valid else "REJECTED " + escape_payload(c.text, 40)
        if c.px_per_module:
            label += f"  {c.px_per_module:.1f} px/module"
        x, y = min(q[0] for q in c.polygon), max(0, min(q[1] for q in c.polygon) - 10)
        cv2.putText(img, label, (x, max(20, y)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 3)
        cv2.putText(img, label, (x, max(20, y)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick)
    legend = (f"mean {rep.mean:.0f}  sharpness {rep.sharpness:.0f}  decode {rep.decode_ms:.1f} ms  "
              f"green: CID  red: rejected  blue: ROI")
    cv2.rectangle(img, (0, h - int(40 * scale)), (w, h), (0, 0, 0), -1)
    cv2.putText(img, legend, (10, h - int(12 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, (255, 255, 255), 1)
    return img


def grab(cfg: Config, at: float | None, want_code: bool = True) -> tuple[Any, float]:
    """A decoded frame from the source: for a file, at `at` seconds, else the first one with a code
    in the first ~15 s (else the middle); for a live source, the newest after ~1 s of reading."""
    import av
    import zxingcpp

    from edge_agent.capture.media import luma, to_av_packet
    from edge_agent.capture.source import AvSource

    src = AvSource(cfg.source)
    info = src.open()
    dec = av.CodecContext.create(info.codec, "r")
    if info.extradata:
        dec.extradata = info.extradata
    if info.codec == "rawvideo":
        dec.width, dec.height, dec.pix_fmt = info.width, info.height, info.pix_fmt
    best = None
    started = time.monotonic()
    n = 0
    try:
        for pkt in src.packets():
            p = to_av_packet(pkt, info.time_base)
            try:
                frames = dec.decode(p)
            except av.error.FFmpegError:
                continue
            for f in frames:
                n += 1
                best = (f, pkt.t)
                if src.live:
                    continue
                if at is not None:
                    if pkt.t >= at:
                        return best
                elif want_code and n % 5 == 0 and zxingcpp.read_barcodes(
                        np.ascontiguousarray(luma(f)), formats=zxingcpp.BarcodeFormat.QRCode):
                    return best
            if src.live and time.monotonic() - started > 1.0 and best is not None:
                return best
            if not src.live and at is None and pkt.t > 15:
                break
    finally:
        src.close()
    if best is None:
        raise SystemExit(f"edge-agent snapshot: no frame from {src.describe}")
    return best


def print_report(rep: Report, out: Path | None = None, stream: Any = sys.stdout) -> None:
    print(f"source {rep.source} at {rep.t:.2f} s, {rep.width}x{rep.height}", file=stream)
    print(f"exposure: mean {rep.mean:.0f}/255, {rep.clipped_dark:.1%} black, {rep.clipped_bright:.1%} white; "
          f"sharpness (Laplacian variance) {rep.sharpness:.0f}; decode {rep.decode_ms:.1f} ms", file=stream)
    for c in rep.codes:
        state = "CID" if c.valid else "REJECTED"
        ppm = f"{c.px_per_module:.1f} px/module" if c.px_per_module else "? px/module"
        print(f"  {state:<8} {escape_payload(c.text)}  {ppm} ({c.modules or '?'} modules)  "
              f"sharpness {c.sharpness:.0f}", file=stream)
    for line in rep.advice():
        print(f"advice: {line}", file=stream)
    if out is not None:
        print(f"wrote {out}", file=stream)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("snapshot", help="one annotated frame and advice on code size, focus and exposure",
                       description="Take one frame from the source, outline each code (green: a valid CID, red: "
                       "a rejected payload, blue: the region of interest), save it as a JPEG and print pixels per QR "
                       "module, sharpness, exposure, decode time and what to change. For aiming and focusing.")
    add_config_arg(s)
    s.add_argument("--source", metavar="PATH_OR_URL", help="a file or URL instead of the configured source")
    s.add_argument("--at", type=float, metavar="S", help="files: the frame at S seconds (default: the first "
                   "frame showing a code)")
    s.add_argument("-o", "--output", default="snapshot.jpg", help="annotated JPEG (default snapshot.jpg)")
    s.set_defaults(func=cmd_snapshot)
    t = sub.add_parser("tune", help="the snapshot figures refreshed every second (Ctrl-C to stop)",
                       description="Print the snapshot figures and advice every second while you turn the lens "
                       "or move the camera; Ctrl-C stops.")
    add_config_arg(t)
    t.add_argument("--source", metavar="PATH_OR_URL", help="a file or URL instead of the configured source")
    t.add_argument("--count", type=int, default=0, metavar="N",
                   help="stop after N readings (default 0: run until Ctrl-C)")
    t.set_defaults(func=cmd_tune)


def _config(args: argparse.Namespace) -> Config:
    cfg = load_config_or_exit(args, strict_source=args.source is None)
    if args.source:
        kind = "url" if "://" in args.source else "file"
        cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"kind": kind, "path": args.source})})
    setup_logging("ERROR")
    return cfg


def cmd_snapshot(args: argparse.Namespace) -> int:
    from edge_agent.capture.media import luma

    cfg = _config(args)
    frame, t = grab(cfg, args.at)
    rep = analyse(np.ascontiguousarray(luma(frame)), cfg, cfg.source.path or cfg.source.command or "?", t)
    out = Path(args.output)
    if not cv2.imwrite(str(out), annotate(frame.to_ndarray(format="bgr24"), rep, cfg)):
        print(f"edge-agent snapshot: cannot write {out}", file=sys.stderr)
        return 73
    print_report(rep, out)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from edge_agent.capture.media import luma

    cfg = _config(args)
    at = 0.0
    n = 0
    try:
        while True:
            frame, t = grab(cfg, at if cfg.source.kind == "file" else None, want_code=False)
            rep = analyse(np.ascontiguousarray(luma(frame)), cfg, cfg.source.path or "?", t)
            codes = "; ".join(f"{escape_payload(c.text, 24)} {c.px_per_module or 0:.1f}px/mod sharp {c.sharpness:.0f}"
                              for c in rep.codes) or "no code"
            print(f"t={t:6.2f}  mean {rep.mean:3.0f}  sharp {rep.sharpness:6.0f}  decode {rep.decode_ms:5.1f} ms  "
                  f"{codes}  | {rep.advice()[0]}", flush=True)
            n += 1
            if args.count and n >= args.count:
                return 0
            at += 1.0
            if cfg.source.kind != "file":
                time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
