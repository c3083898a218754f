"""A stand-in for a loaded Raspberry Pi: raw H.264 (Annex-B, no timestamps) on stdout, in bursts.

    python tests/bursty_h264.py VIDEO [--burst 10] [--fps 30] [--seconds S] [--loop] [--stall-after S]
                                      [--gone-if PATH]

Frames are held back and written `--burst` at a time, so the pipe delivers 30 fps on average
but nothing for 333 ms and then ten frames at once: what rpicam-vid does when the reader or
the pipe buffer is slow. `--burst 1` writes each frame on time. `--stall-after` stops writing after
S seconds of video but keeps the pipe open (rpicam-vid hung); `--gone-if PATH`: a camera that does not
come back: the first run creates PATH, every later one keeps its pipe open and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import av


def annexb_frames(video: str) -> list[bytes]:
    """The file's H.264 packets as Annex-B with parameter sets before each keyframe, in decode order."""
    with av.open(video) as src:
        ins = src.streams.video[0]
        bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", ins)
        out = []
        for pkt in src.demux(ins):
            for p in bsf.filter(pkt if pkt.size else None):
                out.append(bytes(p))
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this much video (0: the file once)")
    ap.add_argument("--loop", action="store_true")
    ap.add_argument("--stall-after", type=float, default=0.0, help="stop writing after this much video, pipe open")
    ap.add_argument("--gone-if", help="if this file exists write nothing (pipe open); else create it")
    ap.add_argument("--t0-file", help="write here the wall-clock time (Unix seconds) the video's first frame is "
                    "'captured' at, the truth a detected_at is checked against")
    args = ap.parse_args()
    if args.gone_if:
        if os.path.exists(args.gone_if):
            time.sleep(3600)
            return
        open(args.gone_if, "w").close()
    frames = annexb_frames(args.video)
    out = sys.stdout.buffer
    start = time.monotonic()
    if args.t0_file:  # frame i is captured at start + (i + 1) / fps (see the burst's delay below)
        with open(args.t0_file, "w") as f:
            f.write(f"{time.time() - (time.monotonic() - start) + 1 / args.fps:.6f}\n")
    n = 0
    pending: list[bytes] = []
    try:
        while True:
            for data in frames:
                if args.seconds and n >= args.seconds * args.fps:
                    return
                if args.stall_after and n >= args.stall_after * args.fps:
                    if pending:
                        out.write(b"".join(pending))
                        pending = []
                    out.flush()
                    time.sleep(3600)
                pending.append(data)
                n += 1
                if len(pending) >= args.burst:
                    # the burst goes out when its last frame has been captured
                    delay = start + n / args.fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    out.write(b"".join(pending))
                    out.flush()
                    pending = []
            if not (args.loop or args.seconds):
                break
    except (BrokenPipeError, OSError):
        return
    finally:
        try:
            if pending:
                out.write(b"".join(pending))
            out.flush()
        except (BrokenPipeError, OSError):
            pass


if __name__ == "__main__":
    main()
