"""The daemon's memory over many events: RSS must stay flat, not grow with each event it has seen.

    python benchmarks/event_memory.py [--events 10000] [--tolerance-mb 10]

`edge-agent run` loops a short synthetic video (eight distinct labels, each in view 0.25 s) as fast
as it can, with 0.3 s pre/post-roll, delivering every clip to a local HTTP server that answers 201.
Each loop of the file is a new set of events. RSS is sampled every 500 delivered events; after a
warm-up of 1,000 events (allocator arenas, codec buffers, SQLite's cache settle) the spread of the
samples must stay within --tolerance-mb. Exits 1 when it does not, or when deliveries stop.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.media_factory import make_video  # noqa: E402

WARMUP_EVENTS = 1000
SAMPLE_EVERY = 500


class Sink(BaseHTTPRequestHandler):
    """A receiver that reads the request and answers 201: the agent, not the server, is measured."""

    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with Sink.lock:
            Sink.count += 1
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_a: object) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--tolerance-mb", type=float, default=10.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        codes = [(f"MEM-{i:02d}", 0.1 + i * 0.25, 0.1 + i * 0.25 + 0.2) for i in range(8)]
        video = make_video(work / "dense.mp4", seconds=2.2, size=(320, 240), codes=codes, scale=4, gop=10)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        cfg = work / "config.yaml"
        cfg.write_text(
            f"device_id: mem-bench\nlog_level: WARNING\nsource:\n  kind: file\n  path: {video}\n  loop: true\n"
            f"detector:\n  rate_hz: 30\n  cooldown_s: 1\n"
            f"clip:\n  pre_roll_s: 0.3\n  post_roll_s: 0.3\n"
            f"upload:\n  url: http://127.0.0.1:{httpd.server_address[1]}/cid\n"
            f"spool:\n  dir: {work / 'spool'}\n  min_free_bytes: 0\n", encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg)],
                                stderr=(work / "agent.log").open("wb"), cwd=ROOT)  # noqa: SIM115
        ps = psutil.Process(proc.pid)
        samples: list[tuple[int, float]] = []
        started = time.monotonic()
        next_sample = SAMPLE_EVERY
        last_count, last_progress = 0, time.monotonic()
        try:
            while Sink.count < args.events:
                time.sleep(0.2)
                if proc.poll() is not None:
                    print(f"the agent exited with {proc.returncode}:\n{(work / 'agent.log').read_text()[-2000:]}")
                    return 1
                if Sink.count != last_count:
                    last_count, last_progress = Sink.count, time.monotonic()
                elif time.monotonic() - last_progress > 30:
                    print(f"no delivery for 30 s at {Sink.count} events")
                    return 1
                if Sink.count >= next_sample:
                    samples.append((Sink.count, ps.memory_info().rss / 2**20))
                    print(f"{Sink.count:>7} events  RSS {samples[-1][1]:7.1f} MB  "
                          f"{Sink.count / (time.monotonic() - started):6.1f} events/s", flush=True)
                    next_sample += SAMPLE_EVERY
        finally:
            proc.terminate()
            proc.wait(20)
            httpd.shutdown()
    settled = [rss for n, rss in samples if n >= WARMUP_EVENTS]
    spread = max(settled) - min(settled) if settled else float("inf")
    first, last = (settled[0], settled[-1]) if settled else (0.0, 0.0)
    ok = spread <= args.tolerance_mb
    print(f"events {Sink.count}; RSS after {WARMUP_EVENTS} events {first:.1f} MB, at the end {last:.1f} MB, "
          f"spread {spread:.1f} MB (target <= {args.tolerance_mb:g} MB): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
