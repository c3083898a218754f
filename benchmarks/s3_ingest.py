"""Four edge clients deliver clips through `POST /cid` with USE_DATA_INGESTION=true into a real
SeaweedFS over S3, with a receiver restart half-way; then every clip must be listed exactly once.

    python benchmarks/s3_ingest.py [--clips 1000] [--clients 4] [--size-bytes 8000]

Prints clips/s and the p50/p99 latency of a delivered request (as an edge client sees it:
/cid -> /ingest/ldo -> S3 objects + key marker -> reply).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.receiver_fixture import ReceiverProcess, free_port  # noqa: E402
from tests.seaweed_fixture import SeaweedFS, deliver_clips  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--size-bytes", type=int, default=8000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weed = SeaweedFS(Path(tmp) / "weed").start()
        try:
            weed.client().create_bucket(Bucket="ldos")
            port = free_port()
            env = {**weed.env(), "USE_DATA_INGESTION": "true", "DATA_INGESTION_URL": f"http://127.0.0.1:{port}",
                   "SITE": "plant-a"}
            r = ReceiverProcess(Path(tmp) / "receiver", env=env, port=port)
            r.extra_args = ["--storage", "s3://ldos/ldo", "--s3-endpoint", weed.endpoint]
            restarts = []

            def restart() -> None:
                t0 = time.perf_counter()
                r.restart()
                restarts.append(time.perf_counter() - t0)

            with r:
                keys, lat, secs = deliver_clips(r.cid_url, args.clips, clients=args.clients,
                                                size=args.size_bytes, on_half=restart)
                ldos = r.ldos()
                events = r.events()
        finally:
            weed.stop()
    lat.sort()
    ids = [x["id"] for x in ldos]
    print(f"delivered        {len(keys)} clips of {args.size_bytes} B from {args.clients} clients in {secs:.1f} s: "
          f"{len(keys) / secs:.1f} clips/s (receiver restarted once, {restarts[0]:.1f} s down)")
    print(f"listed           {len(ids)} LDOs, {len(set(ids))} distinct; /cid records {len(events)} for "
          f"{len(set(e['idempotency_key'] for e in events))} keys")
    p50, p99 = statistics.median(lat) * 1000, lat[int(len(lat) * 0.99) - 1] * 1000
    print(f"latency          p50 {p50:.0f} ms, p99 {p99:.0f} ms (of the successful request)")
    ok = len(ids) == len(set(ids)) == len(keys)
    print("PASS" if ok else "FAIL: lost or duplicated LDOs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
