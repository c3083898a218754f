"""`edge-agent snapshot` and `edge-agent tune`: a look through the camera for the technician.

snapshot: one frame from the configured source, the detector run on it, an annotated JPEG (code
outlines, decoded text, rejected payloads in red, the region of interest) and the figures that
decide whether codes will be read: pixels per QR module, sharpness (variance of the Laplacian),
exposure (mean, clipped share) and decode time, with advice lines. tune: the same figures every
second, for focusing a lens and aiming a camera over SSH.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_agent import const
from edge_agent.commands.common import add_config_arg, load_config_or_exit
from edge_agent.commands.frame_reader import FrameReader, open_reader
from edge_agent.config import Config
from edge_agent.delivery.cid import escape_payload
from edge_agent.inspection import Report, analyse, annotate, sharpness_scale
from edge_agent.logs import setup_logging

if TYPE_CHECKING:
    from edge_agent.app import Agent
    from edge_agent.pipeline.qr_detector import Detector

__all__ = ["Report", "analyse", "annotate", "pick", "print_report"]

def pick(reader: FrameReader, agent: Agent, detector: Detector, at: float | None) -> tuple[Any, float]:
    """A frame for `snapshot`: for a file, the one at `at` seconds, else the first where the daemon's
    detector finds a code in the first ~15 s (else the middle); for a camera, the newest after ~1 s."""
    from edge_agent.capture.media import GrayFrame, luma

    best = None
    started = time.monotonic()
    for n, (f, t) in enumerate(reader.frames()):
        best = (f, t)
        if reader.camera:
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


def print_report(rep: Report, out: Path | None = None, stream: Any = None) -> None:
    stream = stream or sys.stdout  # looked up now: a caller may have replaced sys.stdout since import
    print(f"source {rep.source} at {rep.t:.2f} s, {rep.width}x{rep.height}", file=stream)
    print(f"exposure: mean {rep.mean:.0f}/255, {rep.clipped_dark:.1%} black, {rep.clipped_bright:.1%} white; "
          f"sharpness (Laplacian variance) {rep.sharpness:.0f} for the whole image (scene-dependent: compare "
          f"readings while turning the lens, higher is sharper); detect {rep.detect_ms:.1f} ms", file=stream)
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
    t.add_argument("--web", action="store_true",
                   help="serve the live view (the daemon's page: picture, figures, advice) instead of printing; "
                   "on http.host:http.port, without the daemon, for aiming before installing")
    t.add_argument("--port", type=int, metavar="N", help="with --web: this port instead of http.port (default 9108)")
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


def cmd_snapshot(args: argparse.Namespace) -> int:
    from edge_agent.app import Agent
    from edge_agent.capture.media import luma

    cfg = _config(args)
    agent = Agent(cfg)
    detector = agent.detector()
    stop = threading.Event()
    reader = open_reader(agent, "snapshot", stop)
    try:
        if args.at is not None and reader.camera:
            print(f"edge-agent snapshot: --at applies to files; {cfg.source.kind} sources give the newest frame",
                  file=sys.stderr)
        frame, t = pick(reader, agent, detector, None if reader.camera else args.at)
    except SourceProblem as exc:
        if stop.is_set():
            print("edge-agent snapshot: stopped before a frame came; nothing written", file=sys.stderr)
            return 0
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
    if args.web:
        from edge_agent.commands.tune_web import serve

        return serve(cfg, args.port)
    agent = Agent(cfg)
    detector = agent.detector()
    stop = threading.Event()
    reader = open_reader(agent, "tune", stop)
    n = 0
    try:
        for frame, t in reader.every(1.0):
            if stop.is_set():
                break
            rep = analyse(luma(frame), agent, detector, reader.src.describe, t)
            codes = "; ".join(f"{escape_payload(c.text, 24)} {c.px_per_module or 0:.1f}px/mod sharp {c.sharpness:.0f}"
                              for c in rep.codes) or "no code"
            print(f"t={t:6.2f}  mean {rep.mean:3.0f}  sharp {rep.sharpness:6.0f}  detect {rep.detect_ms:5.1f} ms  "
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
