"""kill -9 of a running pipe-source daemon, at random moments and at chosen ones (just after a detection,
during a clip's write, mid-upload, between a delivered clip's two deletes), then a run that drains: every
read an agent logged as detected before its kill reaches the server once, CID-only where no clip was
made, no CID under two event ids, every video whole; the agent comes up after every kill.

The process-kill half of benchmarks/powercut.py (which cuts the power under the spool with LazyFS, where
CI has no FUSE): the camera (tests/label_camera.py) never shows a label twice, so each CID is one product.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests import agent_process, spool_watch
from tests.flaky_server import FlakyServer
from tests.kill_windows import arm
from tests.label_camera import agent_config, labels_shown
from tests.read_ledger import detections, judge, queued, read_log
from tests.receiver_fixture import free_port

WINDOWS = ("detect", "clip-write", "upload-mid-body", "delete", "random")
KILLS = 10


class LostReads(AssertionError):
    """Reads detected before a kill that never reached the server."""


def start(tmp_path: Path, n: int, cfg: Path) -> tuple[agent_process.AgentProcess, Path]:
    log = tmp_path / f"agent-{n:02d}.log"
    with log.open("wb") as f:
        proc = agent_process.popen(["run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=f,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, log


def came_up(proc: agent_process.AgentProcess, log: Path, timeout: float = 30, frames: bool = True) -> bool:
    """Its spool recovered and (`frames`) frames flow: the log lines beside READY=1."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        text = read_log(log)
        if "spool ready" in text and (not frames or "ready: frames are flowing" in text):
            return True
        time.sleep(0.02)
    return False


def aim(window: str, proc: agent_process.AgentProcess, log: Path, spool: Path, server: FlakyServer,
        rng: random.Random) -> bool:
    """Wait for `window` to open; False if it did not within 10 s (the kill then falls where it falls)."""
    gone = lambda: proc.poll() is not None  # noqa: E731
    if window == "random":
        time.sleep(rng.uniform(0.2, 3.0))
        return True
    if window == "detect":
        ok = spool_watch.log_line(log, "detected cid=", 10, gone)
        time.sleep(rng.uniform(0.0, 0.1))
        return ok
    if window == "clip-write":
        return spool_watch.clip_write(spool, rng, 10, gone)
    if window == "delete":
        return spool_watch.delete_after_delivery(spool, 10, gone)
    is_open = arm(server, "mid-body")
    deadline = time.monotonic() + 10
    while not is_open() and not gone() and time.monotonic() < deadline:
        time.sleep(0.002)
    return is_open()


@pytest.mark.slow
def test_kill9_of_a_running_daemon_loses_no_detected_read(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("KILL_SEED", "7")))
    spool = tmp_path / "spool"
    port = free_port()
    plan = [WINDOWS[i % len(WINDOWS)] for i in range(KILLS)]
    rng.shuffle(plan)
    reads: dict[str, str] = {}
    queued_ids: set[str] = set()
    landed: list[str] = []
    not_up: list[int] = []
    with FlakyServer(stall_s=1.0) as server:
        cfg = agent_config(tmp_path, spool, server.url, port, device_id="kill9", pre_roll_s=0.5, post_roll_s=0.8,
                           backoff_s=0.1, camera_args="--every-s 0.8 --in-view-s 0.5 --first-s 0.2")
        for n, window in enumerate(plan):
            proc, log = start(tmp_path, n, cfg)
            if not came_up(proc, log):
                not_up.append(n)
            elif aim(window, proc, log, spool, server, rng) and proc.poll() is None:
                landed.append(window)
            proc.kill()
            proc.wait()
            server.script = []
            reads |= detections(read_log(log))
            queued_ids |= queued(read_log(log))
        # a last run with no kill: a few reads, then the line runs empty, the agent delivers what is queued
        # and stops on request; what it read must all arrive, whatever the kills before left
        proc, log = start(tmp_path, KILLS, cfg)
        try:
            assert came_up(proc, log), read_log(log)[-2000:]
            for _ in range(2):
                spool_watch.log_line(log, "detected cid=", 10, lambda: proc.poll() is not None)
            (tmp_path / "no-more-labels").touch()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (spool_watch.spool_clips(port) != 0 or set(detections(read_log(log)))
                                                   - set(server.delivered)):
                time.sleep(0.1)
        finally:
            proc.terminate()
            assert proc.wait(20) == 0
        unkilled = detections(read_log(log))
        reads |= unkilled
        queued_ids |= queued(read_log(log))
    verdict = judge(reads, server.delivered, [s for s in server.seen if s.complete], labels_shown(tmp_path))
    print(f"\nkill -9 of a running daemon: {KILLS} kills ({len(landed)} in their windows), {verdict.summary()}")
    assert not not_up, f"the agent did not come up after kill(s) {not_up}"
    assert len(landed) >= KILLS * 2 // 3, f"only {landed} landed in their windows"
    assert len(reads) >= KILLS, "too few reads for the kills to mean anything"
    assert unkilled, "the last run read nothing"
    assert not verdict.ghosts, verdict.ghosts
    assert not verdict.corrupt, verdict.corrupt
    assert not verdict.lost_after_queued(queued_ids), "the spool lost clips it had queued"
    assert not set(verdict.lost) & set(unkilled), "reads lost by a run that was not killed"
    if verdict.lost:
        raise LostReads(f"{len(verdict.lost)} of {len(reads)} reads detected before a kill never reached the "
                        f"server: {sorted(verdict.lost.values())}")
