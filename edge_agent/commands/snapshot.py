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
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_agent import const
from edge_agent.commands.common import add_config_arg, load_config_or_exit
from edge_agent.config import Config
from edge_agent.delivery.cid import escape_payload
from edge_agent.logs import setup_logging

if TYPE_CHECKING:
    from edge_agent.app import Agent
    from edge_agent.pipeline.detector import Detector

GREEN, RED, BLUE = (40, 200, 40), (40, 40, 230), (230, 120, 30)
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


def sharpness_scale(value: float) -> str:
    """A code's sharpness in words, with the scale, so a number means something to a technician. The
    variance of the Laplacian of the code area measures edge contrast per pixel: a printed QR code in
    focus scores in the hundreds or more at any resolution, a blurred one under MIN_SHARPNESS."""
    word = "blurry" if value < MIN_SHARPNESS else "sharp" if value >= GOOD_SHARPNESS else "fair"
    return f"{word}: under {MIN_SHARPNESS:g} blurry, {GOOD_SHARPNESS:g} and over sharp"


def sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var()) if gray.size else 0.0


def analyse(gray: np.ndarray, agent: Agent, detector: Detector, source: str, t: float) -> Report:
    """The daemon's view of one frame, with the figures a technician needs: the daemon's own detector
    (decoder, options, region of interest, downscale) and its one CID rule, so what this shows is what
    the daemon reads."""
    from edge_agent.capture.media import GrayFrame
    from edge_agent.delivery.cid import payload_text

    h, w = gray.shape
    validator = agent.validator()
    found = detector.detect(GrayFrame(np.ascontiguousarray(gray), t, 0.0))
    rep = Report(source, t, w, h, float(gray.mean()), float((gray < 5).mean()), float((gray > 250).mean()),
                 sharpness(gray), detector.last_ms)
    for det in found:
        poly = list(det.polygon)
        side = np.mean([math.dist(poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly))])
        xs, ys = [q[0] for q in poly], [q[1] for q in poly]
        crop = gray[max(0, min(ys)) : max(ys), max(0, min(xs)) : max(xs)]
        rep.codes.append(CodeReport(payload_text(det.payload), validator.from_payload(det.payload) is not None, poly,
                                    det.modules, round(side / det.modules, 2) if det.modules else None,
                                    sharpness(crop)))
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


class FrameReader:
    """Holds the source open and hands out decoded frames: a camera is opened once for a whole `tune`
    session (re-opening a Pi camera takes seconds), and its stream is read continuously so what is
    shown is the newest picture, never a stale buffered one."""

    def __init__(self, agent: Agent):
        from edge_agent.capture.media import open_decoder

        self.src = agent.source()
        info = self.src.open()
        self.info = info
        self._dec = open_decoder(info)
        self._packets = self.src.packets()

    @property
    def live(self) -> bool:
        return self.src.live

    def frames(self) -> Iterator[tuple[Any, float]]:
        import av

        from edge_agent.capture.media import to_av_packet

        t = 0.0
        for pkt in self._packets:
            t = pkt.t
            try:
                decoded = self._dec.decode(to_av_packet(pkt, self.info.time_base))
            except av.error.FFmpegError:
                continue
            for f in decoded:
                yield f, pkt.t
        try:  # the decoder's threads still hold the last frames (all of a single picture)
            for f in self._dec.decode(None):
                yield f, t
        except av.error.FFmpegError:
            return

    def every(self, period_s: float) -> Iterator[tuple[Any, float]]:
        """One frame per `period_s`: of media time for a file, of wall time for a camera (reading all the
        frames in between, so the pipe never backs up)."""
        next_at = time.monotonic() if self.live else 0.0
        for f, t in self.frames():
            now = time.monotonic() if self.live else t
            if now >= next_at:
                next_at = now + period_s
                yield f, t

    def close(self) -> None:
        self.src.close()


def pick(reader: FrameReader, agent: Agent, detector: Detector, at: float | None) -> tuple[Any, float]:
    """A frame for `snapshot`: for a file, the one at `at` seconds, else the first where the daemon's
    detector finds a code in the first ~15 s (else the middle); for a camera, the newest after ~1 s."""
    from edge_agent.capture.media import GrayFrame, luma

    best = None
    started = time.monotonic()
    for n, (f, t) in enumerate(reader.frames()):
        best = (f, t)
        if reader.live:
            if time.monotonic() - started > 1.0:
                break
            continue
        if at is not None:
            if t >= at:
                break
        elif n % 5 == 0 and detector.detect(GrayFrame(np.ascontiguousarray(luma(f)), t, 0.0)):
            break
        if at is None and t > 15:
            break
    if best is None:
        raise SourceProblem(f"no frame could be decoded from {reader.src.describe}")
    return best


def print_report(rep: Report, out: Path | None = None, stream: Any = sys.stdout) -> None:
    print(f"source {rep.source} at {rep.t:.2f} s, {rep.width}x{rep.height}", file=stream)
    print(f"exposure: mean {rep.mean:.0f}/255, {rep.clipped_dark:.1%} black, {rep.clipped_bright:.1%} white; "
          f"sharpness (Laplacian variance) {rep.sharpness:.0f} for the whole image (scene-dependent: compare "
          f"readings while turning the lens, higher is sharper); decode {rep.decode_ms:.1f} ms", file=stream)
    for c in rep.codes:
        state = "CID" if c.valid else "REJECTED"
        ppm = f"{c.px_per_module:.1f} px/module" if c.px_per_module else "? px/module"
        print(f"  {state:<8} {escape_payload(c.text)}  {ppm} ({c.modules or '?'} modules)  "
              f"sharpness {c.sharpness:.0f} ({sharpness_scale(c.sharpness)})", file=stream)
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


class SourceProblem(Exception):
    """The source gave no usable frame; the message says what to check."""


def _config(args: argparse.Namespace) -> Config:
    cfg = load_config_or_exit(args, strict_source=args.source is None)
    if args.source:
        kind = "url" if "://" in args.source else "file"
        cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"kind": kind, "path": args.source})})
    setup_logging("ERROR")
    return cfg


def _open(agent: Agent, command: str) -> FrameReader:
    """The source opened the daemon's way; a fault is one line with its cause and check's hint."""
    from edge_agent.capture.source import SourceError
    from edge_agent.commands.check import source_hint

    cfg = agent.cfg.source
    where = cfg.command if cfg.kind == "pipe" else str(cfg.path)
    try:
        return FrameReader(agent)
    except SourceError as exc:
        missing = cfg.kind in ("file", "v4l2") and not Path(where).exists()
        print(f"edge-agent {command}: {exc}", file=sys.stderr)
        print(f"  -> {source_hint(cfg.kind, where, str(exc))}", file=sys.stderr)
        raise SystemExit(const.EXIT_NOINPUT if missing else const.EXIT_DATAERR) from None


def cmd_snapshot(args: argparse.Namespace) -> int:
    from edge_agent.app import Agent
    from edge_agent.capture.media import luma

    cfg = _config(args)
    agent = Agent(cfg)
    detector = agent.detector()
    reader = _open(agent, "snapshot")
    try:
        if args.at is not None and reader.live:
            print(f"edge-agent snapshot: --at applies to files; {cfg.source.kind} sources give the newest frame",
                  file=sys.stderr)
        frame, t = pick(reader, agent, detector, None if reader.live else args.at)
    except SourceProblem as exc:
        print(f"edge-agent snapshot: {exc}", file=sys.stderr)
        return const.EXIT_DATAERR
    finally:
        reader.close()
    rep = analyse(luma(frame), agent, detector, reader.src.describe, t)
    out = Path(args.output)
    if not cv2.imwrite(str(out), annotate(frame.to_ndarray(format="bgr24"), rep, cfg)):
        print(f"edge-agent snapshot: cannot write {out} (is the folder there and writable?)", file=sys.stderr)
        return const.EXIT_CANTCREAT
    print_report(rep, out)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """One reading a second from the source held open; Ctrl-C (or --count) ends it with exit 0."""
    from edge_agent.app import Agent
    from edge_agent.capture.media import luma

    cfg = _config(args)
    agent = Agent(cfg)
    detector = agent.detector()
    reader = _open(agent, "tune")
    stop = threading.Event()

    def on_stop(_signum: int, _frame: object) -> None:
        # not a KeyboardInterrupt: raised inside PyAV's read of a pipe, it is swallowed there. Ending
        # the source ends the read; set even where SIGINT was ignored at start (a background job).
        stop.set()
        reader.src.interrupt()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    n = 0
    try:
        for frame, t in reader.every(1.0):
            if stop.is_set():
                break
            rep = analyse(luma(frame), agent, detector, reader.src.describe, t)
            codes = "; ".join(f"{escape_payload(c.text, 24)} {c.px_per_module or 0:.1f}px/mod sharp {c.sharpness:.0f}"
                              for c in rep.codes) or "no code"
            print(f"t={t:6.2f}  mean {rep.mean:3.0f}  sharp {rep.sharpness:6.0f}  decode {rep.decode_ms:5.1f} ms  "
                  f"{codes}  | {rep.advice()[0]}", flush=True)
            n += 1
            if args.count and n >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    if n == 0:
        print(f"edge-agent tune: no frame could be decoded from {reader.src.describe}", file=sys.stderr)
        return const.EXIT_DATAERR
    return 0
