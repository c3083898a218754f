"""kill -9 of a delivering `spool flush` mid-body, after the server stored a clip but before it answered,
and at random moments, then a clean flush: every clip arrives, under one idempotency key each, with bytes
matching metadata.clip.sha256."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace kills the process at one exact system call")
def test_a_delivery_killed_between_its_two_deletes_is_finished_by_the_next_start(tmp_path: Path) -> None:
    """The server has the clip; the agent deleted its sidecar and is killed (SIGKILL, delivered by strace on
    the video's unlink, which does not run) before it deletes the video. The next owner finishes the delete:
    nothing set aside in quarantine/, nothing sent twice, and the commands that judge quarantine exit 0."""
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_config(spool_dir))
    event_id = add_clip(spool)[0]
    spool.close()
    mp4 = spool_dir / "clips" / f"{event_id}.mp4"
    with FlakyServer() as server:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"upload:\n  url: {server.url}\nspool:\n  dir: {spool_dir}\n  min_free_bytes: 0\n")
        killed = subprocess.run(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(mp4), "-e", "trace=unlink,unlinkat",
             "-e", "inject=unlink,unlinkat:error=ENOENT:signal=SIGKILL",
             sys.executable, "-m", "edge_agent.cli", "spool", "flush", "--config", str(cfg)],
            cwd=agent_process.ROOT, capture_output=True, text=True, timeout=60)
        assert killed.returncode == -signal.SIGKILL or killed.returncode == 128 + signal.SIGKILL, killed
        assert mp4.exists() and not mp4.with_suffix(".json").exists()  # killed between the two deletes
        assert list(server.delivered) == [event_id]
        again = agent_process.run(["spool", "flush", "--config", str(cfg)], capture_output=True, text=True)
        requeue = agent_process.run(["spool", "requeue", "--config", str(cfg)], capture_output=True, text=True)
    assert again.returncode == 0 and requeue.returncode == 0, again.stderr + requeue.stderr
    assert list((spool_dir / "quarantine").iterdir()) == [] and list((spool_dir / "clips").iterdir()) == []
    assert len([s for s in server.seen if s.complete]) == 1  # the next start did not send it again
