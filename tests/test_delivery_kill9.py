"""kill -9 of the delivering process at random moments, many times, then a clean flush: every clip
arrives, under one idempotency key each, with bytes matching metadata.clip.sha256."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.delivery.spool import Spool
from tests.flaky_server import FlakyServer
from tests.spool_helpers import add_clip, spool_config

PER_ROUND = 15
ROUNDS = 12
CLIPS = PER_ROUND * ROUNDS


def flush(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "spool", "flush", "--config", str(cfg),
                             "--timeout", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_kill9_during_delivery_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    rng = random.Random(int(os.environ.get("KILL_SEED", "42")))
    clips: set[str] = set()
    # a real HTTP server that records every request and answers 409 to a key it already stored
    with FlakyServer(reply_delay_s=0.03) as server:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"upload:\n  url: {server.url}\n  backoff_base_s: 0.1\nspool:\n  dir: {spool_dir}\n"
                       "  min_free_bytes: 0\n")
        killed = 0
        for _ in range(ROUNDS):
            spool = Spool(spool_config(spool_dir))  # new clips keep arriving, as on a device
            clips |= {add_clip(spool, size=rng.randint(100_000, 800_000))[0] for _ in range(PER_ROUND)}
            spool.close()
            proc = flush(cfg)
            time.sleep(rng.uniform(0.15, 0.6))  # the command starts in ~0.15 s, then delivers
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait()
        final = flush(cfg)
        assert final.wait(120) == 0
    stored = server.delivered
    assert sorted(stored) == sorted(clips)  # every clip, under its own key, nothing else
    for key, seen in stored.items():
        meta = json.loads(seen.fields["metadata"])
        assert meta["event_id"] == key and seen.video_sha256 == meta["clip"]["sha256"]
    complete = [s for s in server.seen if s.complete]
    wire_duplicates = len(complete) - len(stored)
    print(f"\nkill -9 test: {len(stored)}/{CLIPS} clips delivered, {killed} kills, "
          f"{wire_duplicates} duplicate requests on the wire (deduplicated by the server)")
    assert killed >= ROUNDS // 2, "the kills should land while delivering"
    assert Spool(spool_config(spool_dir)).status().clips == 0
