"""Trickling bodies against a real receiver: 100 clients each declare a 10 MB clip, send its headers and
the start of its video, then one byte every half second. With the receiver's shipped defaults
(--body-timeout 10, --min-body-rate 25000) every one must get 408 and be disconnected within the body
deadline, while a normal 5 MB clip posted meanwhile is stored, and nothing is left in incoming/.

    python benchmarks/trickle_bodies.py [--clients 100] [--declared 10000000] [--every 0.5]
        [--body-timeout 10] [--slack 3] [--normal-bytes 5000000] [--normal-max-s 5]

Prints the figures; exits 1 when a trickler was not cut with 408 by body-timeout + slack, or the normal
upload failed or took longer than --normal-max-s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.receiver_fixture import ReceiverProcess  # noqa: E402
from tests.trickle_client import trickle  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--declared", type=int, default=10_000_000, help="Content-Length each trickler declares")
    ap.add_argument("--every", type=float, default=0.5, help="seconds between a trickler's bytes")
    ap.add_argument("--body-timeout", type=float, default=10.0, help="the receiver's --body-timeout (its default)")
    ap.add_argument("--slack", type=float, default=3.0, help="seconds past the deadline still counted as in time")
    ap.add_argument("--normal-bytes", type=int, default=5_000_000)
    ap.add_argument("--normal-max-s", type=float, default=5.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        r = ReceiverProcess(Path(tmp) / "receiver")
        r.extra_args = ["--body-timeout", str(args.body_timeout)]
        ready = threading.Barrier(args.clients + 1)
        with r, ThreadPoolExecutor(args.clients) as pool:
            t0 = time.monotonic()
            futures = [pool.submit(trickle, r.port, args.declared, args.every, args.body_timeout * 4, ready)
                       for _ in range(args.clients)]
            ready.wait(60)
            connected_s = time.monotonic() - t0
            video = os.urandom(args.normal_bytes)
            key = str(uuid.uuid4())
            meta = {"event_id": key, "cid": "CID-NORMAL",
                    "clip": {"size_bytes": len(video), "sha256": hashlib.sha256(video).hexdigest()}}
            t1 = time.monotonic()
            ok = requests.post(r.cid_url, data={"cid": "CID-NORMAL", "metadata": json.dumps(meta)},
                               files={"video": (f"{key}.mp4", video, "video/mp4")},
                               headers={"Idempotency-Key": key}, timeout=60)
            normal_s = time.monotonic() - t1
            health = requests.get(f"{r.url}/healthz", timeout=10).ok
            results = [f.result() for f in futures]
            left = list((r.data_dir / "incoming").iterdir())
            stored = ok.status_code == 201 and len(r.events()) == 1

    cut = [t.closed_after_s for t in results if t.status == 408 and t.closed_after_s is not None]
    late = [t for t in results if t.status != 408 or t.closed_after_s is None
            or t.closed_after_s > args.body_timeout + args.slack]
    print(f"tricklers: {args.clients} declaring {args.declared} bytes, a byte every {args.every} s; "
          f"receiver --body-timeout {args.body_timeout:g} (default --min-body-rate); all connected in "
          f"{connected_s:.2f} s")
    if cut:
        print(f"cut with 408 and closed: {len(cut)}/{args.clients}; seconds after headers: min {min(cut):.2f} "
              f"p50 {pct(cut, 50):.2f} p99 {pct(cut, 99):.2f} max {max(cut):.2f} "
              f"(deadline {args.body_timeout:g} s + slack {args.slack:g} s)")
    print(f"normal upload meanwhile: {args.normal_bytes} bytes, HTTP {ok.status_code}, {normal_s:.2f} s "
          f"(max {args.normal_max_s:g} s), stored: {stored}; /healthz ok: {health}; part files left: {len(left)}")
    failed = []
    if late:
        failed.append(f"{len(late)} tricklers not cut with 408 in time: "
                      f"{[(t.status, t.closed_after_s) for t in late[:5]]}")
    if not stored or normal_s > args.normal_max_s or not health:
        failed.append("the normal upload was not stored in time while tricklers were connected")
    if left:
        failed.append(f"{len(left)} part files left in incoming/")
    for f in failed:
        print(f"MISS: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
