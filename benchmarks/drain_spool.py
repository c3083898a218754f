"""Time to drain queued clips to a local reference receiver (a real `edge-agent receiver` process).

    python benchmarks/drain_spool.py [--clips 200] [--size-bytes 1000000]

Prints clips/s, MB/s and the total time; every clip is checked on the server side (sha256).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent import __version__  # noqa: E402
from edge_agent.config import UploadConfig  # noqa: E402
from edge_agent.metrics import Metrics  # noqa: E402
from edge_agent.spool import Spool  # noqa: E402
from edge_agent.uploader import Uploader  # noqa: E402
from tests.receiver_fixture import ReceiverProcess  # noqa: E402
from tests.spool_helpers import add_clip, spool_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--size-bytes", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(spool_config(Path(tmp) / "spool"))
        t0 = time.perf_counter()
        for _ in range(args.clips):
            add_clip(spool, size=args.size_bytes)
        queued = time.perf_counter() - t0
        with ReceiverProcess(Path(tmp) / "receiver") as receiver:
            up = Uploader(spool, UploadConfig(url=receiver.cid_url), Metrics(), __version__)
            t0 = time.perf_counter()
            assert up.drain(600), "did not drain"
            secs = time.perf_counter() - t0
            events = receiver.events()
        ok = sum(1 for e in events if e["sha256_ok"])
        mb = args.clips * args.size_bytes / 1e6
        print(f"queued {args.clips} clips of {args.size_bytes / 1e6:.1f} MB in {queued:.2f} s "
              f"({args.clips / queued:.0f} clips/s, fsync included)")
        print(f"drained {len(events)} clips ({ok} sha256 ok) in {secs:.2f} s: {args.clips / secs:.1f} clips/s, "
              f"{mb / secs:.1f} MB/s")


if __name__ == "__main__":
    main()
