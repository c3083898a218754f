"""A stand-in for a raw USB camera: uncompressed frames (YUYV by default) on stdout in real time.

    python tests/stream_raw.py VIDEO [--pix-fmt yuyv422] [--size 1280x720] [--loop] [--seconds S]

The frames of VIDEO are converted to `--pix-fmt` and written as rawvideo in Matroska (a container
that carries timestamps and the frame format), paced at the recorded rate, like a V4L2 camera
that offers only YUYV. `--fast` writes without pacing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from fractions import Fraction

import av


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--pix-fmt", default="yuyv422")
    ap.add_argument("--size", default="", help="WIDTHxHEIGHT; empty: the video's")
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--loop", action="store_true")
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args()
    with av.open(args.video) as src:
        ins = src.streams.video[0]
        fps = float(ins.average_rate or 30)
        w, h = (int(x) for x in args.size.split("x")) if args.size else (ins.width, ins.height)
    out = av.open(sys.stdout.buffer, "w", format="matroska")
    st = out.add_stream("rawvideo", rate=round(fps))
    st.width, st.height, st.pix_fmt = w, h, args.pix_fmt
    st.codec_context.time_base = Fraction(1, round(fps))
    start = time.monotonic()
    n = 0
    try:
        while True:
            with av.open(args.video) as src:  # decoded as it goes: a long 1080p video does not fit in memory raw
                for frame in src.decode(video=0):
                    if args.seconds and n >= args.seconds * fps:
                        return
                    raw = frame.reformat(width=w, height=h, format=args.pix_fmt)
                    delay = start + n / fps - time.monotonic()
                    if delay > 0 and not args.fast:
                        time.sleep(delay)
                    raw.pts, raw.time_base = n, st.codec_context.time_base
                    for p in st.encode(raw):
                        out.mux(p)
                    n += 1
            if not (args.loop or args.seconds):
                break
    except (BrokenPipeError, OSError):
        return
    finally:
        with contextlib.suppress(BrokenPipeError, OSError, av.error.FFmpegError):
            out.close()


if __name__ == "__main__":
    main()
