"""A read survives the process the moment it is logged: `edge-agent run` on a live camera whose clips
take long to finish (a 15 s post-roll) is killed with SIGKILL after a few detections, before any clip
is made; the next owner of the spool sends every read it logged, CID-only, saying the agent stopped
before the clip was made, under the event id the log named."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests import agent_process
from tests.receiver_fixture import ReceiverProcess, free_port
from tests.test_daemon import start_daemon, streamer, wait_until

pytestmark = pytest.mark.slow


def test_reads_logged_before_a_kill_are_delivered_cid_only_after_it(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    receiver = ReceiverProcess(tmp_path / "receiver")
    proc = start_daemon(tmp_path, streamer("--loop"), receiver.cid_url, free_port(),
                        extra="clip:\n  post_roll_s: 15\n")
    try:
        wait_until(lambda: len(re.findall("detected cid=", log.read_text())) >= 2, 40, "two reads")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    logged = dict(re.findall(r"detected cid=(\S+) clip=(\S+)", text))
    assert len(logged) >= 2 and "clip ready" not in text  # no clip was made: the reads alone were kept
    with receiver:
        res = agent_process.run(["spool", "flush", "--config", str(tmp_path / "config.yaml")], capture_output=True,
                                text=True, timeout=60)
        stored = {e["event_id"]: e for e in receiver.events()}
    assert res.returncode in (0, 1), res.stderr
    assert {e["cid"]: k for k, e in stored.items()} == logged
    for e in stored.values():
        assert not e.get("size_bytes")
        assert "edge-agent stopped (killed or crashed) before this read's clip was made" in (
            e["metadata"]["clip"]["error"])
        assert e["metadata"]["detected_at"] and e["metadata"]["detection"]["decoder"]
