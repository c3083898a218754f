"""The live view's memory under many viewers: `edge-agent run` with N MJPEG streams open at once.

    python benchmarks/live_viewers.py [--viewers 50] [--seconds 20] [--video sample_media/conveyor_720p30.mp4]

The daemon replays the sample in real time (looping) with its web server on loopback. It measures
the daemon's RSS with no viewer (after one picture has been rendered), then opens --viewers
/live.mjpeg streams at once, each reading as fast as it can for --seconds, and records the peak
RSS; then closes them all and measures again after the render thread has ended. Prints the
figures, how many streams were served and how many refused (503), and exits 1 when the viewers
raise RSS by more than MAX_GROWTH_MB at their peak, or leave more than MAX_LEFT_MB behind.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.web_daemon import web_daemon  # noqa: E402

# the bound: MJPEG_MAX_VIEWERS streams of shared frames, one render thread's working set
MAX_GROWTH_MB = 40
MAX_LEFT_MB = 25


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def viewer(port: int, stop: threading.Event, served: list[int], refused: list[int], read: list[int]) -> None:
    """One MJPEG client on a raw socket: reads until told to stop (a real player does the same)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        refused.append(1)
        return
    with sock:
        try:
            sock.sendall(b"GET /live.mjpeg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = sock.recv(4096)
        except OSError:  # no answer within 10 s: the server is swamped
            refused.append(1)
            return
        if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
            refused.append(1)
            return
        served.append(1)
        total = len(head)
        sock.settimeout(1.0)
        while not stop.is_set():
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                break
            total += len(chunk)
        read.append(total)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--video", type=Path, default=ROOT / "sample_media" / "conveyor_720p30.mp4")
    args = ap.parse_args()

    # up once the pipeline has a picture to show
    with web_daemon("live-viewers-", args.video, ready_path="/frame.jpg",
                    ready=lambda reply: reply.status_code == 200) as daemon:
        proc, port = daemon.proc, daemon.port
        time.sleep(8)  # the render thread ends 5 s after its last viewer; the pipeline settles
        before = rss_mb(proc.pid)

        stop = threading.Event()
        served: list[int] = []
        refused: list[int] = []
        read: list[int] = []
        threads = [threading.Thread(target=viewer, args=(port, stop, served, refused, read), daemon=True)
                   for _ in range(args.viewers)]
        for t in threads:
            t.start()
        peak = before
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(0.25)
        stop.set()
        for t in threads:
            t.join(10)
        time.sleep(10)  # the streams end within a frame, the render thread 5 s later
        after = rss_mb(proc.pid)

    mb_read = sum(read) / 1e6
    print(f"viewers asked {args.viewers}: served {len(served)}, refused {len(refused)}; "
          f"{mb_read:.1f} MB of MJPEG read in {args.seconds:.0f} s")
    print(f"RSS no viewer {before:.0f} MB, peak with viewers {peak:.0f} MB (+{peak - before:.0f}), "
          f"10 s after they left {after:.0f} MB (+{after - before:.0f})")
    misses = []
    if peak - before > MAX_GROWTH_MB:
        misses.append(f"peak growth {peak - before:.0f} MB > {MAX_GROWTH_MB} MB")
    if after - before > MAX_LEFT_MB:
        misses.append(f"left behind {after - before:.0f} MB > {MAX_LEFT_MB} MB")
    if not served:
        misses.append("no stream was served")
    for m in misses:
        print(f"MISS: {m}", file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
