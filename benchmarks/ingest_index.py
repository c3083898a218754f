"""Data-ingestion at scale: ingest throughput into a real SeaweedFS, `GET /ingest/list` latency from
the LDO index at 10k, 100k and 1M LDOs (SQLite and PostgreSQL), and the index rebuild time.

    python benchmarks/ingest_index.py [--real 5000] [--big 200] [--scales 10000,100000,1000000]

1. `--real` tiny LDOs (200 B clips) and `--big` 1 MB LDOs through `POST /ingest/ldo` of a real
   receiver on SeaweedFS (4 clients): LDOs/s.
2. On those `--real` LDOs: `/ingest/list` at skip 0 and at skip real-100, p50/p99 over 100 requests
   each (target < 50 ms); then a receiver with an empty --data-dir rebuilds the index from the
   store: time, per 10k objects, and the total it lists.
3. The index bulk-loaded with synthetic rows (a year of LDOs from 20 devices at 2 sites) to each
   scale; a receiver serves it over HTTP; 300 requests at random skips over the whole list, and
   100 with filters (device, site, a day): p50/p99. Exits 1 when p99 at the largest scale >= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from edge_agent.delivery.contract import rfc3339  # noqa: E402
from edge_agent.receiver.index import HOUR_US, LdoIndex, PostgresLdoIndex, SqliteLdoIndex  # noqa: E402
from tests.postgres_fixture import Postgres, pg_binary  # noqa: E402
from tests.receiver_fixture import ReceiverProcess  # noqa: E402
from tests.seaweed_fixture import SeaweedFS  # noqa: E402

TARGET_MS = 50.0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * 1000


def ingest(url: str, n: int, size: int, clients: int = 4) -> float:
    """n LDOs from `clients` threads; returns wall seconds."""
    body = os.urandom(size)
    counter = iter(range(n))
    lock = threading.Lock()

    def client(c: int) -> None:
        s = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            key = str(uuid.uuid4())
            meta = {"event_id": key, "device_id": f"cam-{i % 8}", "detected_at": rfc3339(time.time())}
            r = s.post(f"{url}/ingest/ldo", data={"metadata": json.dumps(meta)},
                       files={"video": ("v.mp4", body, "video/mp4")}, headers={"Idempotency-Key": key}, timeout=60)
            if r.status_code != 201:
                raise SystemExit(f"ingest failed: {r.status_code} {r.text[:200]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def time_lists(url: str, params: list[dict[str, object]]) -> tuple[list[float], int]:
    s = requests.Session()
    s.get(f"{url}/ingest/list", params={"limit": 1}, timeout=30)  # warm the connection
    lat, total = [], 0
    for p in params:
        t0 = time.perf_counter()
        r = s.get(f"{url}/ingest/list", params=p, timeout=30)
        lat.append(time.perf_counter() - t0)
        r.raise_for_status()
        total = r.json()["total"]
    return lat, total


def s3_receiver(weed: SeaweedFS, data_dir: Path, bucket: str) -> ReceiverProcess:
    r = ReceiverProcess(data_dir, env={**weed.env(), "SITE": "plant-a"})
    r.extra_args = ["--storage", f"s3://{bucket}/ldo", "--s3-endpoint", weed.endpoint]
    return r


def real_store(tmp: Path, n_real: int, n_big: int) -> bool:
    ok = True
    weed = SeaweedFS(tmp / "weed").start()
    try:
        for bucket in ("tiny", "big"):
            weed.client().create_bucket(Bucket=bucket)
        with s3_receiver(weed, tmp / "big-r", "big") as r:
            secs = ingest(r.url, n_big, 1 << 20)
        print(f"ingest 1 MB clips  {n_big} LDOs in {secs:.1f} s: {n_big / secs:.1f} LDOs/s "
              f"({n_big / secs:.1f} MB/s), SeaweedFS + SQLite index, 4 clients")
        with s3_receiver(weed, tmp / "tiny-r", "tiny") as r:
            secs = ingest(r.url, n_real, 200)
            print(f"ingest 200 B clips {n_real} LDOs in {secs:.1f} s: {n_real / secs:.1f} LDOs/s")
            deep = max(0, n_real - 100)
            for skip in (0, deep):
                lat, total = time_lists(r.url, [{"skip": skip, "limit": 100}] * 100)
                miss = pct(lat, 99) >= TARGET_MS
                ok &= not miss and total == n_real
                print(f"list at {total} real LDOs, skip {skip:>5}: p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms"
                      f"{'  MISSED < 50 ms' if miss else ''}")
            before = r.ldos()
        t0 = time.perf_counter()
        with s3_receiver(weed, tmp / "empty-r", "tiny") as r2:  # empty --data-dir: rebuild at start
            rebuilt = time.perf_counter() - t0
            after = r2.ldos()
        same = after == before
        ok &= same and len(after) == n_real
        print(f"rebuild from the store at start (empty --data-dir): {len(after)} LDOs in {rebuilt:.1f} s "
              f"(start-up included) = {rebuilt / n_real * 10_000:.1f} s per 10k objects; "
              f"listing identical: {same}")
    finally:
        weed.stop()
    return ok


def synthetic(start: int, n: int, rnd: random.Random) -> list[dict[str, object]]:
    year_us = 365 * 24 * HOUR_US
    t0 = 1_767_225_600 * 1_000_000  # 2026-01-01
    rows = []
    for i in range(start, start + n):
        dev = rnd.randrange(20)
        rows.append({"id": f"ldo_{uuid.uuid4().hex[:16]}_{i}", "base": f"plant-{dev % 2}/cam-{dev}/d/x",
                     "key_hash": None, "site": f"plant-{dev % 2}", "device_id": f"cam-{dev}",
                     "created_us": t0 + rnd.randrange(year_us), "size_bytes": 1_000_000, "has_video": 1,
                     "status": "ingested"})
    return rows


def list_latency(tmp: Path, name: str, index: LdoIndex, spec: str, scales: list[int]) -> float:
    rnd = random.Random(1)
    loaded = 0
    p99 = 0.0
    for scale in scales:
        t0 = time.perf_counter()
        while loaded < scale:
            batch = min(20_000, scale - loaded)
            index.add(synthetic(loaded, batch, rnd))
            loaded += batch
        load_s = time.perf_counter() - t0
        r = ReceiverProcess(tmp / f"{name}-{scale}")
        r.extra_args = ["--storage", f"file:{tmp / 'empty-store'}", "--index", spec]
        with r:
            random_skips = [{"skip": rnd.randrange(0, scale - 100), "limit": 100} for _ in range(298)]
            lat, total = time_lists(r.url, [{"skip": 0, "limit": 100}, {"skip": scale - 100, "limit": 100},
                                            *random_skips])
            day = 1_767_225_600 + rnd.randrange(360) * 86400
            filtered = [{"device_id": f"cam-{rnd.randrange(20)}", "skip": rnd.randrange(0, 1000)} for _ in range(40)]
            filtered += [{"site": "plant-1", "skip": rnd.randrange(0, scale // 3)} for _ in range(30)]
            filtered += [{"since": rfc3339(day), "until": rfc3339(day + 86400), "skip": rnd.randrange(0, 100)}
                         for _ in range(30)]
            flat, _ = time_lists(r.url, filtered)
        p99 = pct(lat, 99)
        print(f"list {name:<10} {total:>8} LDOs (loaded in {load_s:5.1f} s): random skip p50 {pct(lat, 50):5.1f} ms "
              f"p99 {p99:5.1f} ms; filtered p50 {pct(flat, 50):5.1f} ms p99 {pct(flat, 99):5.1f} ms"
              f"{'  MISSED < 50 ms' if p99 >= TARGET_MS else ''}")
        assert total == scale, (total, scale)
    return p99


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=int, default=5000, help="tiny LDOs through a real receiver into SeaweedFS")
    ap.add_argument("--big", type=int, default=200, help="1 MB LDOs through a real receiver into SeaweedFS")
    ap.add_argument("--scales", default="10000,100000,1000000")
    ap.add_argument("--skip-real", action="store_true", help="only the bulk-loaded list latency")
    args = ap.parse_args()
    scales = [int(x) for x in args.scales.split(",")]
    ok = True
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "empty-store").mkdir()
        if not args.skip_real:
            ok &= real_store(tmp, args.real, args.big)
        sq = SqliteLdoIndex(tmp / "bulk.sqlite3")
        ok &= list_latency(tmp, "sqlite", sq, f"sqlite:{tmp / 'bulk.sqlite3'}", scales) < TARGET_MS
        sq.close()
        if pg_binary("initdb"):
            pg = Postgres(fast=False).start()  # durable settings, as in production
            try:
                url = pg.new_database()
                idx = PostgresLdoIndex(url)
                ok &= list_latency(tmp, "postgresql", idx, url, scales) < TARGET_MS
                idx.close()
            finally:
                pg.stop()
        else:
            print("PostgreSQL not installed: its figures are skipped (apt-get install postgresql)")
    print("OK" if ok else "MISSED a target")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
