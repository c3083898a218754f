"""A stand-in camera for `pipe` sources that never shows the same label twice, across any number of restarts:
raw H.264 (Annex-B) on stdout, encoded as it goes, at the frame rate, for ever.

    python tests/label_camera.py --counter FILE [--fps 15] [--every-s 1.5] [--in-view-s 0.8] [--stop-file F]

Each label is `<prefix>-<n>` with n taken from the counter file, which is advanced (written and fsynced)
before the label's first frame leaves, so a camera started again after a crash, a kill -9 or a power cut
goes on with the next number: one CID is one physical product, and a CID an agent delivers under two event
ids is a ghost read, not the same label shown twice. The counter's lock is held for the camera's life, so a
camera started while the last one's process is still dying (its reader was killed; it goes at its next
write) waits for it rather than handing out a number twice. With `--stop-file`, no label is shown once
that file exists (the line runs empty: an agent can drain). Keep the counter outside any file system a
test cuts: it is the test's truth.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python tests/label_camera.py`
    sys.path.insert(0, str(ROOT))

from tests.media_factory import qr_image  # noqa: E402


def take_number(counter: Path) -> int:
    """The next label's number, made durable before the label is shown (the caller holds the lock)."""
    try:
        n = int(counter.read_text(encoding="ascii").strip() or 0)
    except FileNotFoundError:
        n = 0
    part = counter.with_name(counter.name + ".part")
    with part.open("w", encoding="ascii") as f:
        f.write(f"{n + 1}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, counter)
    return n


def agent_config(folder: Path, spool: Path, url: str, http_port: int, *, device_id: str, pre_roll_s: float,
                 post_roll_s: float, backoff_s: float, camera_args: str = "") -> Path:
    """An agent's config.yaml in `folder` reading this camera through a pipe (its counter and stop file beside
    the config, outside `spool`), delivering to `url`, with its metrics on `http_port`."""
    camera = (f"{sys.executable} {Path(__file__).resolve()} --counter {folder / 'labels.counter'} "
              f"--stop-file {folder / 'no-more-labels'} {camera_args}")
    cfg = folder / "config.yaml"
    cfg.write_text(
        f"device_id: {device_id}\nsource:\n  kind: pipe\n  command: {camera.strip()}\n  stall_s: 5\n"
        "  options: {probesize: '32768', analyzeduration: '200000'}\n"  # FFmpeg probes a raw pipe 5 s by default
        f"upload:\n  url: {url}\n  backoff_base_s: {backoff_s}\n  backoff_cap_s: {backoff_s * 10}\n"
        f"  read_timeout_s: 5\nspool:\n  dir: {spool}\n  min_free_bytes: 0\nnoreads:\n  dir: {folder / 'noreads'}\n"
        f"clip:\n  pre_roll_s: {pre_roll_s}\n  post_roll_s: {post_roll_s}\nhttp:\n  port: {http_port}\n",
        encoding="utf-8")
    return cfg


def label_cid(prefix: str, n: int) -> str:
    return f"{prefix}-{n:06d}"


def labels_shown(folder: Path, prefix: str = "PC") -> set[str]:
    """Every CID a camera of `agent_config(folder, ...)` has shown so far (its counter is the test's truth)."""
    try:
        count = int((folder / "labels.counter").read_text(encoding="ascii").strip() or 0)
    except FileNotFoundError:
        count = 0
    return {label_cid(prefix, n) for n in range(count)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counter", required=True, type=Path, help="the next label's number (kept across restarts)")
    ap.add_argument("--prefix", default="PC")
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--size", default="480x272", help="WxH")
    ap.add_argument("--every-s", type=float, default=1.5, help="a new label this often")
    ap.add_argument("--in-view-s", type=float, default=0.8, help="how long each label stays in view")
    ap.add_argument("--first-s", type=float, default=0.5, help="the first label after this much video")
    ap.add_argument("--stop-file", type=Path, help="show no new label once this file exists")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    lock = open(args.counter.with_name(args.counter.name + ".lock"), "a+")  # noqa: SIM115 - held for life
    fcntl.flock(lock, fcntl.LOCK_EX)

    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
    ctx.framerate = args.fps
    ctx.time_base = Fraction(1, args.fps)
    ctx.gop_size = args.fps  # a keyframe a second, as cameras are usually set up
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
    rng = np.random.default_rng(11)
    background = cv2.GaussianBlur((rng.random((h, w)) * 120 + 60).astype(np.uint8), (7, 7), 0)
    out = sys.stdout.buffer
    start = time.monotonic()
    shown: tuple[np.ndarray, float] | None = None  # the label in view and when it came
    next_label = args.first_s
    n = 0
    try:
        while True:
            t = n / args.fps
            if t >= next_label:
                next_label += args.every_s
                if args.stop_file is None or not args.stop_file.exists():
                    shown = (qr_image(label_cid(args.prefix, take_number(args.counter)), 4), t)
            img = np.roll(background, n * 2, axis=1).copy()
            if shown is not None:
                q, since = shown
                if t - since > args.in_view_s:
                    shown = None
                else:
                    side = q.shape[0]
                    x = (w - side) // 2
                    y = min(h - side, 8 + int((t - since) * 40))
                    img[y:y + side, x:x + side] = q
            frame = av.VideoFrame.from_ndarray(img, format="gray").reformat(format="yuv420p")
            frame.pts = n
            data = b"".join(bytes(p) for p in ctx.encode(frame))
            delay = start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            out.write(data)
            out.flush()
            n += 1
    except (BrokenPipeError, OSError):  # the reader is gone: a camera whose agent died stops
        return


if __name__ == "__main__":
    main()
