"""Time to queue and drain clips through the spool to a local HTTP server.

    python benchmarks/drain_spool.py [--clips 200] [--size-bytes 1000000] [--receiver]

Queues N clips of random bytes (each put is durable: 3 fsyncs and a SQLite commit), reopens the
spool after a clean stop (only what a stop leaves is checked) and as after a crash (recovery hashes
every clip against its sha256, which is what a start after a power cut costs), then drains
them with one Uploader to a server in another process and prints clips/s, MB/s and the total
time. The default server is a small stdlib one that parses the multipart body, writes the video
to disk and checks its sha256 against the metadata; `--receiver` uses the project's reference
receiver (FastAPI) instead. Every clip is checked on the server side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent import __version__  # noqa: E402
from edge_agent.config import SpoolConfig, UploadConfig  # noqa: E402
from edge_agent.delivery.spool import Spool  # noqa: E402
from edge_agent.delivery.uploader import Uploader  # noqa: E402
from edge_agent.metrics import Metrics  # noqa: E402
from tests.spool_helpers import crash  # noqa: E402

# a day of a busy line (one product a second) queued during an outage drains in under half an hour
TARGET_CLIPS_PER_S = 50
# a restart after a clean stop must not grow with the backlog: systemd's start waits for it
TARGET_CLEAN_START_S = 1.0


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """Just enough multipart/form-data for this benchmark, with C-speed byte operations (the email
    package's parser takes ~15 ms a megabyte and would be what is measured)."""
    boundary = b"--" + content_type.split("boundary=", 1)[1].strip('"').encode()
    parts: dict[str, bytes] = {}
    for chunk in body.split(boundary)[1:-1]:
        head, _, value = chunk[2:].partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        parts[name] = value[:-2]  # the CRLF before the next boundary
    return parts


def serve(data_dir: str, conn: Any) -> None:
    """The stdlib edge server: POST /cid, store the video, check its sha256, dedupe by key."""
    seen: dict[str, bool] = {}
    out = Path(data_dir)
    expected = conn.recv()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

        def log_message(self, *_a: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            parts = parse_multipart(self.headers["Content-Type"], body)
            key = self.headers["Idempotency-Key"]
            meta = json.loads(parts["metadata"])
            video = parts.get("video") or b""
            ok = hashlib.sha256(video).hexdigest() == meta["clip"]["sha256"]
            status = 409 if key in seen else 201
            if status == 201:
                (out / f"{key}.mp4").write_bytes(video)
                seen[key] = ok
            reply = json.dumps({"sha256_ok": ok}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            if status == 201 and len(seen) == expected:
                conn.send(sum(seen.values()))

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    conn.send(httpd.server_address[1])
    httpd.serve_forever()


def fill(spool: Spool, clips: int, size: int) -> float:
    """Queue `clips` clips; returns the seconds the puts took (making the bytes is not counted)."""
    took = 0.0
    for i in range(clips):
        event_id = f"00000000-0000-4000-8000-{i:012d}"
        data = os.urandom(size)
        part = spool.part_path(event_id)
        part.write_bytes(data)
        meta = {"schema_version": 1, "event_id": event_id, "device_id": "bench", "cid": f"CID-{i}",
                "detected_at": "2026-11-24T00:00:00.000Z",
                "clip": {"size_bytes": size, "sha256": hashlib.sha256(data).hexdigest()},
                "detection": {"decoder": "zxing", "polygon": [], "frame_width": 1, "frame_height": 1, "hits": 1},
                "agent": {"version": __version__}}
        t0 = time.perf_counter()
        assert spool.put(event_id, f"CID-{i}", meta, part)
        took += time.perf_counter() - t0
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--size-bytes", type=int, default=1_000_000)
    ap.add_argument("--receiver", action="store_true", help="drain to the reference receiver (FastAPI) instead")
    args = ap.parse_args()
    mb = args.clips * args.size_bytes / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SpoolConfig(dir=str(Path(tmp) / "spool"), min_free_bytes=0)
        spool = Spool(cfg)
        put_s = fill(spool, args.clips, args.size_bytes)
        spool.close()
        t0 = time.perf_counter()
        spool = Spool(cfg)  # a restart after a clean stop
        clean_s = time.perf_counter() - t0
        crash(spool)  # as a crash or a power cut leaves it
        t0 = time.perf_counter()
        spool = Spool(cfg)  # recovery checks every clip's sha256
        open_s = time.perf_counter() - t0
        print(f"queued {args.clips} clips of {args.size_bytes / 1e6:.1f} MB: {put_s:.2f} s of put() "
              f"({put_s / args.clips * 1000:.1f} ms each, fsync included)")
        print(f"reopened the spool after a clean stop: {clean_s:.3f} s; after a crash (recovery hashes "
              f"{mb:.0f} MB): {open_s:.2f} s")
        if args.receiver:
            from tests.receiver_fixture import ReceiverProcess

            with ReceiverProcess(Path(tmp) / "receiver") as receiver:
                up = Uploader(spool, UploadConfig(url=receiver.cid_url), Metrics(), __version__)
                t0 = time.perf_counter()
                assert up.drain(600), "did not drain"
                secs = time.perf_counter() - t0
                ok = sum(1 for e in receiver.events() if e["sha256_ok"])
            server = "reference receiver (FastAPI/uvicorn)"
        else:
            (Path(tmp) / "server").mkdir()
            parent, child = multiprocessing.Pipe()
            proc = multiprocessing.Process(target=serve, args=(str(Path(tmp) / "server"), child), daemon=True)
            proc.start()
            parent.send(args.clips)
            port = parent.recv()
            up = Uploader(spool, UploadConfig(url=f"http://127.0.0.1:{port}/cid"), Metrics(), __version__)
            t0 = time.perf_counter()
            assert up.drain(600), "did not drain"
            secs = time.perf_counter() - t0
            ok = parent.recv() if parent.poll(10) else -1
            proc.terminate()
            server = "stdlib server in another process"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"drained {args.clips} clips ({ok} sha256 ok) to a {server} in {secs:.2f} s: "
              f"{args.clips / secs:.1f} clips/s, {mb / secs:.1f} MB/s; peak RSS of the agent side {rss:.0f} MB")
        missed = []
        if ok != args.clips:
            missed.append(f"{args.clips - ok} clip(s) not received whole")
        if clean_s > TARGET_CLEAN_START_S:
            missed.append(f"a clean restart took {clean_s:.2f} s, over {TARGET_CLEAN_START_S:g} s")
        if args.clips / secs < TARGET_CLIPS_PER_S:
            missed.append(f"{args.clips / secs:.1f} clips/s is under the target {TARGET_CLIPS_PER_S}")
        print("PASS" if not missed else "FAIL: " + "; ".join(missed))
        return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
