"""A stand-in camera for `pipe` sources: streams a video file to stdout as MPEG-TS in real time.

    python tests/stream_sample.py VIDEO [--seconds S] [--loop] [--stall-after S]

Like `rpicam-vid ... -o -` or a GStreamer pipeline ending in `fdsink`, it writes a live stream to
a pipe at the recorded frame rate. `--stall-after` stops writing (but stays alive) after S seconds:
a hung camera, for the source watchdog.
"""

from __future__ import annotations

import argparse
import sys
import time

import av


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this much video (0: the file once)")
    ap.add_argument("--loop", action="store_true")
    ap.add_argument("--stall-after", type=float, default=0.0)
    ap.add_argument("--fast", action="store_true", help="no pacing: write as fast as possible (to make a file)")
    ap.add_argument("--t0-file", help="write here the wall-clock time (Unix seconds) of the video's t=0: when the "
                    "camera 'captured' its first frame, the truth a receiver's detected_at is checked against")
    args = ap.parse_args()
    out = av.open(sys.stdout.buffer, "w", format="mpegts")
    start = time.monotonic()
    if args.t0_file:
        with open(args.t0_file, "w") as f:
            f.write(f"{time.time() - (time.monotonic() - start):.6f}\n")
    offset = 0.0
    with av.open(args.video) as src:
        ins = src.streams.video[0]
        ost = out.add_stream_from_template(ins)
        tb = ins.time_base
        duration = float(ins.duration * tb) if ins.duration else 0.0
        while True:
            src.seek(0)
            first = None
            for pkt in src.demux(ins):
                if pkt.dts is None or not pkt.size:
                    continue
                first = pkt.dts if first is None else first
                t = offset + float((pkt.dts - first) * tb)
                if args.seconds and t >= args.seconds:
                    out.close()
                    return
                if args.stall_after and t >= args.stall_after:
                    sys.stdout.flush()
                    time.sleep(3600)
                delay = start + t - time.monotonic()
                if delay > 0 and not args.fast:
                    time.sleep(delay)
                shift = round(offset / tb)
                pkt.pts = pkt.pts + shift if pkt.pts is not None else None
                pkt.dts = pkt.dts + shift
                pkt.stream = ost
                try:
                    out.mux(pkt)
                except (BrokenPipeError, OSError):
                    return
            offset += duration or 1.0
            if not args.loop and not args.seconds:
                break
    out.close()


if __name__ == "__main__":
    main()
