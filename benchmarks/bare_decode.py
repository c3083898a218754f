"""The yardstick of the CPU benchmarks: bare PyAV decoding, and the camera-like stream it decodes.

    python benchmarks/bare_decode.py VIDEO [--frames N] [--loop]     prints the CPU seconds

Decodes the first N frames of VIDEO (looping over it if N is more than it holds, as the live
camera stand-ins do) with PyAV's default settings and nothing else: no detection, no ring, no
clips, not even the luma plane taken out. Run as its own process so its CPU time is its own.
`no_bframes_copy` makes the stream a Pi camera sends: 1080p30 H.264 without B-frames, a
keyframe every second.
"""

from __future__ import annotations

import argparse
import resource
import sys
from fractions import Fraction
from pathlib import Path

import av


def no_bframes_copy(src: Path, dst: Path, gop: int = 30) -> Path:
    """`src` re-encoded as a camera's hardware encoder writes it: every picture a reference (no
    B-frames), a keyframe every `gop` frames. Kept if already made."""
    if dst.exists():
        return dst
    part = dst.with_suffix(".part" + dst.suffix)
    with av.open(str(src)) as inp, av.open(str(part), "w", format="mp4") as out:
        ins = inp.streams.video[0]
        rate = ins.average_rate or 30
        st = out.add_stream("libx264", rate=rate)
        st.width, st.height, st.pix_fmt = ins.codec_context.width, ins.codec_context.height, "yuv420p"
        st.codec_context.gop_size = gop
        st.codec_context.options = {"preset": "veryfast", "bf": "0", "x264-params": f"keyint={gop}:min-keyint={gop}"}
        for i, frame in enumerate(inp.decode(ins)):
            frame.pts, frame.time_base = i, Fraction(1, 1) / rate
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    part.rename(dst)
    return dst


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def decode(video: str, frames: int) -> tuple[int, float]:
    """(frames decoded, CPU seconds) for the first `frames` frames, looping over the file."""
    done = 0
    start = cpu_s()
    while done < frames:
        before = done
        with av.open(video) as c:
            for _ in c.decode(video=0):
                done += 1
                if done >= frames:
                    break
        if done == before:
            break  # nothing decodable
    return done, cpu_s() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video")
    ap.add_argument("--frames", type=int, default=0, help="0: the whole file once")
    args = ap.parse_args()
    n, spent = decode(args.video, args.frames or 10**9)
    print(f"{n} {spent:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
