"""`edge-agent run` on a live 30 fps source for a minute: drops, CPU, memory, detection-to-delivery.

    python benchmarks/live_benchmark.py [--seconds 60] [--video sample_media/conveyor_1080p30.mp4] [--encode]
                                        [--raw 1280x720]

The camera is a `pipe` source: tests/stream_sample.py streams the sample in real time as MPEG-TS,
looping (a label every ~5-7 s). --raw WxH makes it a raw YUYV camera of that size instead
(tests/stream_raw.py), which the agent encodes to H.264 as frames arrive. Clips go to a real local
receiver. --encode re-encodes clips (clip.width 1280, libx264) instead of remuxing. Prints frames,
dropped and skipped frames, the daemon's CPU share (of one core; the camera process excluded), its
peak RSS, and detection-to-delivery latency (receiver's received_at - metadata.detected_at; it
includes the post-roll the clip must wait for).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.receiver_fixture import ReceiverProcess, free_port  # noqa: E402

# the device budget: a Pi 4 with 2 GB runs the agent beside the OS and a camera stack
MAX_RSS_MB = 250


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def scrape(port: int) -> dict[str, float]:
    out = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--video", default=str(ROOT / "sample_media" / "conveyor_1080p30.mp4"))
    ap.add_argument("--encode", action="store_true", help="re-encode clips (clip.width: 1280) instead of remux")
    ap.add_argument("--raw", default="", metavar="WxH", help="a raw YUYV camera of this size (encoded on arrival)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        port = free_port()
        with ReceiverProcess(tmpd / "receiver") as receiver:
            cmd = f"{sys.executable} {ROOT / 'tests' / 'stream_sample.py'} {args.video} --loop"
            if args.raw:
                cmd = f"{sys.executable} {ROOT / 'tests' / 'stream_raw.py'} {args.video} --loop --size {args.raw}"
            cfg = tmpd / "config.yaml"
            cfg.write_text(f"source:\n  kind: pipe\n  command: {cmd}\nupload:\n  url: {receiver.cid_url}\n"
                           f"spool:\n  dir: {tmpd / 'spool'}\n  min_free_bytes: 0\nmetrics:\n  port: {port}\n"
                           + ("clip:\n  width: 1280\n" if args.encode else ""), encoding="utf-8")
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg)],
                                    stderr=subprocess.DEVNULL)
            ps = psutil.Process(proc.pid)
            peak = 0
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                peak = max(peak, ps.memory_info().rss)
                time.sleep(0.2)
            cpu = ps.cpu_times()
            m = scrape(port)
            proc.terminate()
            proc.wait(20)
            events = receiver.events()
    lat = sorted(ts(e["received_at"]) - ts(e["metadata"]["detected_at"]) for e in events)
    busy = cpu.user + cpu.system
    camera = f"raw YUYV {args.raw} (encoded on arrival)" if args.raw else "H.264 in MPEG-TS"
    print(f"source           {Path(args.video).name} streamed live at 30 fps as {camera} for {args.seconds:.0f} s, "
          f"clips {'re-encoded (libx264, 1280 px)' if args.encode else 'remuxed'}")
    print(f"frames           {m.get('edge_agent_frames_total', 0):.0f} read, "
          f"{m.get('edge_agent_frames_dropped_total', 0):.0f} dropped, "
          f"{m.get('edge_agent_frames_skipped_total', 0):.0f} skipped by the detector, "
          f"{m.get('edge_agent_frames_analysed_total', 0):.0f} analysed")
    print(f"clips            {len(events)} delivered ({m.get('edge_agent_clips_total', 0):.0f} made)")
    print(f"CPU              {busy / args.seconds:.0%} of one core ({busy / args.seconds / psutil.cpu_count():.0%} "
          f"of {psutil.cpu_count()} cores), camera process excluded")
    print(f"peak RSS         {peak / 2**20:.1f} MB")
    if lat:
        print(f"detect->deliver  median {statistics.median(lat):.2f} s, max {max(lat):.2f} s "
              f"(includes the post-roll)")
    missed = []
    if m.get("edge_agent_frames_dropped_total", 0):
        missed.append("frames dropped on a real-time source")
    if not events:
        missed.append("no clip delivered")
    if peak / 2**20 > MAX_RSS_MB:
        missed.append(f"peak RSS over {MAX_RSS_MB} MB")
    print("PASS" if not missed else "FAIL: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
