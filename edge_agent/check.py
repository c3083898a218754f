"""`edge-agent check`: is this device ready? One PASS/FAIL/SKIP line per part, with a hint a
technician can act on for each failure, and a non-zero exit when anything failed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .cli_common import add_config_arg, load_config_or_exit
from .config import Config
from .logs import setup_logging


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str
    hint: str = ""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check the camera, decoder, spool and server; PASS/FAIL with hints")
    add_config_arg(p)
    p.add_argument("--seconds", type=float, default=5.0, help="how long to read the source (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)


def check_source(cfg: Config, seconds: float) -> tuple[Result, list]:
    """Open the source, read for `seconds`, measure the real frame rate; keep a few frames."""
    import av

    from .media import GrayFrame, luma, to_av_packet
    from .source import AvSource, SourceError

    src = AvSource(cfg.source)
    frames: list[GrayFrame] = []
    where = src.describe
    try:
        info = src.open()
    except SourceError as exc:
        text = str(exc)
        hint = "check source.path / source.command and that the camera is connected"
        if "Permission denied" in text:
            hint = "the service user cannot open the device: add it to the video group (SupplementaryGroups=video)"
        elif "No such file" in text:
            hint = "the path does not exist: list cameras with `v4l2-ctl --list-devices`, files with ls"
        elif "timed out" in text.lower() or "Connection" in text:
            hint = "the camera does not answer: check its IP, port, credentials and the network"
        return Result("source", "FAIL", text, hint), frames
    decoder = av.CodecContext.create(info.codec, "r")
    if info.extradata:
        decoder.extradata = info.extradata
    if info.codec == "rawvideo":
        decoder.width, decoder.height, decoder.pix_fmt = info.width, info.height, info.pix_fmt
    n = 0
    first_t = last_t = None
    started = time.monotonic()
    try:
        for pkt in src.packets():
            n += 1
            first_t = pkt.t if first_t is None else first_t
            last_t = pkt.t
            if len(frames) < 5 and (n % 10 == 1):
                p = to_av_packet(pkt, info.time_base)
                try:
                    for f in decoder.decode(p):
                        frames.append(GrayFrame(luma(f).copy(), pkt.t, pkt.wall))
                except av.error.FFmpegError:
                    pass
            if time.monotonic() - started > seconds or (not src.live and n >= seconds * (info.fps or 30)):
                break
    except SourceError as exc:
        return Result("source", "FAIL", str(exc), "the stream broke while reading: check cable and power"), frames
    finally:
        src.close()
    if n == 0:
        return Result("source", "FAIL", f"{where}: opened but no frames in {seconds:g} s",
                      "the camera sends nothing: check the cable, the command's stderr, or source.stall_s"), frames
    span = (last_t or 0) - (first_t or 0)
    fps = (n - 1) / span if span > 0 else 0.0
    detail = f"{where}: {info.codec} {info.width}x{info.height}, {fps:.1f} fps measured over {n} frames"
    if src.live and info.fps and fps < 0.8 * info.fps:
        return Result("source", "FAIL", detail + f" (camera announces {info.fps:.1f})",
                      "frames arrive slower than announced: lower the resolution or check the USB bus/network"), frames
    return Result("source", "PASS", detail), frames


def check_decoder(cfg: Config, frames: list) -> Result:
    from .detector import DecoderUnavailable, Detector

    try:
        det = Detector(cfg.detector)
    except DecoderUnavailable as exc:
        return Result("decoder", "FAIL", str(exc), "install zxing-cpp (pip) or libzbar0 (apt)")
    if not frames:
        return Result("decoder", "SKIP", f"{det.name} loads; no frames to try it on")
    found: set[str] = set()
    times = []
    for f in frames:
        for d in det.detect(f):
            found.add(d.payload.decode("utf-8", "replace"))
        times.append(det.last_ms)
    detail = f"{det.name}: {max(times):.1f} ms a frame, {len(found)} code(s) in {len(frames)} frames"
    if found:
        detail += ": " + ", ".join(sorted(found)[:3])
    return Result("decoder", "PASS", detail)


def check_spool(cfg: Config) -> Result:
    d = Path(cfg.spool.dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".check-") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        free = shutil.disk_usage(d).free
    except OSError as exc:
        return Result("spool", "FAIL", f"{d}: {exc.strerror or exc}",
                      "the service user must own spool.dir (StateDirectory= does this under systemd)")
    if free < cfg.spool.min_free_bytes:
        return Result("spool", "FAIL", f"{d}: only {free >> 20} MiB free",
                      "free disk space or lower spool.min_free_bytes")
    return Result("spool", "PASS", f"{d}: writable, {free >> 20} MiB free")


def check_server(cfg: Config) -> Result:
    import requests

    if not cfg.upload.url:
        return Result("server", "SKIP", "upload.url is not set: clips stay in the spool")
    parts = urlsplit(cfg.upload.url)
    verify: bool | str = (cfg.upload.ca_file or True) if cfg.upload.verify_tls else False
    try:
        r = requests.get(f"{parts.scheme}://{parts.netloc}/healthz", timeout=(cfg.upload.connect_timeout_s, 10),
                         verify=verify)
    except requests.exceptions.SSLError as exc:
        return Result("server", "FAIL", f"{parts.netloc}: TLS error: {exc}",
                      "set upload.ca_file to the CA that signed the server's certificate")
    except requests.RequestException as exc:
        return Result("server", "FAIL", f"{parts.netloc}: {type(exc).__name__}",
                      "the server does not answer: check upload.url, the network and the firewall")
    return Result("server", "PASS", f"{parts.netloc} answers (GET /healthz: HTTP {r.status_code})")


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args)
    setup_logging("ERROR")
    source, frames = check_source(cfg, args.seconds)
    results = [source, check_decoder(cfg, frames), check_spool(cfg), check_server(cfg)]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.status:<4}  {r.name:<8} {r.detail}")
            if r.hint:
                print(f"{'':<15}hint: {r.hint}")
    sys.stdout.flush()
    return 1 if any(r.status == "FAIL" for r in results) else 0
