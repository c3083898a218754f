"""kill -9 of a delivering `spool flush` mid-body, after the server stored a clip but before it answered,
and at random moments, then a clean flush: every clip arrives, under one idempotency key each, with bytes
matching metadata.clip.sha256."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from edge_agent.delivery.spool import Spool
from tests import agent_process
from tests.flaky_server import FlakyServer
from tests.kill_windows import WINDOWS, kill_in
from tests.spool_helpers import add_clip, spool_config

PER_ROUND = 15
ROUNDS = 6  # each window of kill_windows.WINDOWS twice
CLIPS = PER_ROUND * ROUNDS


def flush(cfg: Path) -> agent_process.AgentProcess:
    return agent_process.popen(["spool", "flush", "--config", str(cfg),
                                "--timeout", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_kill9_during_delivery_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    rng = random.Random(int(os.environ.get("KILL_SEED", "42")))
    clips: set[str] = set()
    # a real HTTP server that records every request and answers 409 to a key it already stored
    with FlakyServer(reply_delay_s=0.03, stall_s=1.0) as server:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"upload:\n  url: {server.url}\n  backoff_base_s: 0.1\nspool:\n  dir: {spool_dir}\n"
                       "  min_free_bytes: 0\n")
        killed = 0
        for round_ in range(ROUNDS):
            window = WINDOWS[round_ % len(WINDOWS)]
            spool = Spool(spool_config(spool_dir))  # new clips keep arriving, as on a device
            clips |= {add_clip(spool, size=rng.randint(100_000, 800_000))[0] for _ in range(PER_ROUND)}
            spool.close()
            proc = flush(cfg)
            # the command starts in ~0.15 s, then delivers
            was_running = kill_in(proc, server, window, rng, (0.15, 0.6))
            assert was_running or window == "any", f"the {window} kill did not land"
            killed += was_running
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
    assert killed >= ROUNDS * 2 // 3, "the kills should land while delivering"
    assert Spool(spool_config(spool_dir)).status().clips == 0
