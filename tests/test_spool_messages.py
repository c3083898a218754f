"""What a technician reads from `edge-agent spool flush|status|list`, run as real subprocesses against a
real server: a refused clip is quarantined with one log line that says what to fix and to requeue,
`status` and `list` show it with its reason, and `flush` says what happened and why clips still wait."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.delivery.spool import Spool
from tests import agent_process
from tests.cli_in_process import Cli
from tests.flaky_server import FlakyServer
from tests.receiver_fixture import free_port
from tests.spool_helpers import add_clip, spool_config

ROOT = Path(__file__).resolve().parent.parent


def edge_agent(config: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return agent_process.run([*argv, "--config", str(config)],
                             capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"upload:\n  url: {url}\n  backoff_base_s: 0.05\n  backoff_cap_s: 0.2\n"
                   f"spool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\n")
    return cfg


def queue(tmp_path: Path, n: int) -> list[tuple[str, str]]:
    spool = Spool(spool_config(tmp_path / "spool"))
    clips = [add_clip(spool)[:2] for _ in range(n)]
    spool.close()
    return clips


@pytest.mark.slow
def test_a_refused_clip_is_quarantined_once_with_a_hint_and_shown_by_status_and_list(tmp_path: Path) -> None:
    (event_id, cid), = queue(tmp_path, 1)
    with FlakyServer([(404, {}, b'{"detail": "Not Found"}')]) as server:
        cfg = write_config(tmp_path, server.url)
        flush = edge_agent(cfg, "spool", "flush", "--timeout", "10")
    assert flush.returncode == 1, flush.stderr  # refused: a person must act, waiting will not deliver it
    reason = "HTTP 404 from the server: Not Found"
    assert flush.stdout.strip() == (f"delivered 0 clip(s); 1 refused by the server and quarantined ({reason}: fix the "
                                    "cause, then `edge-agent spool requeue`); no clip left waiting")
    logged = [line for line in flush.stderr.splitlines() if "quarantined" in line]
    assert len(logged) == 1, flush.stderr  # once, not once by the uploader and again by the spool
    assert f"cid={cid} clip={event_id} reason={reason} -> upload.url ({server.url}) must be the edge server's /cid" \
           in logged[0] and "then run `edge-agent spool requeue`" in logged[0]

    status = edge_agent(cfg, "spool", "status")
    assert status.returncode == 0
    row = next(line for line in status.stdout.splitlines() if line.startswith("quarantined"))
    assert row.split(None, 1)[1] == f"1 (newest: {reason}) -> fix the cause, then `edge-agent spool requeue`"
    assert json.loads(edge_agent(cfg, "spool", "status", "--json").stdout)["quarantine_reason"] == reason

    listing = edge_agent(cfg, "spool", "list")
    assert listing.returncode == 0 and "spool is empty" not in listing.stdout
    row = next(line for line in listing.stdout.splitlines() if line.startswith(event_id))
    assert cid in row and row.endswith(f"QUARANTINED: {reason}")
    assert "1 quarantined clip(s) are not sent: fix the cause, then `edge-agent spool requeue`" in listing.stdout
    rows = json.loads(edge_agent(cfg, "spool", "list", "--json").stdout)
    assert [(r["event_id"], r["quarantined"], r["last_error"]) for r in rows] == [(event_id, True, reason)]


@pytest.mark.slow
def test_flush_with_the_server_down_says_how_many_wait_and_why(tmp_path: Path) -> None:
    queue(tmp_path, 2)
    port = free_port()  # nothing listens
    flush = edge_agent(write_config(tmp_path, f"http://127.0.0.1:{port}/cid"), "spool", "flush", "--timeout", "1")
    assert flush.returncode == const.EXIT_QUEUED
    last = flush.stderr.strip().splitlines()[-1]
    assert last == (f"delivered 0 clip(s); 2 clip(s) still queued, last error: connection refused by 127.0.0.1:{port} "
                    "(is the edge server running?); they go out when the server answers (`edge-agent spool status` "
                    "shows the queue)")


@pytest.mark.slow
def test_flush_with_the_server_up_delivers_and_says_the_spool_is_empty(tmp_path: Path) -> None:
    clips = queue(tmp_path, 2)
    with FlakyServer() as server:
        flush = edge_agent(write_config(tmp_path, server.url), "spool", "flush", "--timeout", "20")
        delivered = list(server.delivered)
    assert flush.returncode == 0, flush.stderr
    assert flush.stdout.strip() == "delivered 2 clip(s); the spool is empty"
    assert delivered == [event_id for event_id, _ in clips]


@pytest.mark.slow
def test_flush_that_sends_a_cid_without_its_video_says_so_and_is_1_as_replay_is(tmp_path: Path) -> None:
    """A clip queued without video (every encoder failed: clip.error says why) goes out CID-only: delivered,
    but not all the work a flush is for, and waiting will not mend it (docs/architecture.md section 8), so
    `flush` exits 1 and says why, as `replay` does for the same CIDs."""
    spool = Spool(spool_config(tmp_path / "spool"))
    (event_id, _cid, _sha), = [add_clip(spool)]
    error = "no H.264 encoder could encode it: h264_nvenc: not in this build"
    meta = {"schema_version": 1, "event_id": "0ddba11-0000-4000-8000-000000000001", "device_id": "test",
            "cid": "CID-N0V1DE0", "detected_at": "2026-11-24T00:00:00.000Z", "clip": {"error": error}}
    assert spool.put(meta["event_id"], meta["cid"], meta, None)
    spool.close()
    with FlakyServer() as server:
        flush = edge_agent(write_config(tmp_path, server.url), "spool", "flush", "--timeout", "20")
        delivered = list(server.delivered)
    assert sorted(delivered) == sorted([event_id, meta["event_id"]])  # both went out
    assert flush.returncode == 1, flush.stderr
    assert flush.stdout.strip() == "delivered 2 clip(s); the spool is empty"
    assert flush.stderr.strip().splitlines()[-1] == ("edge-agent spool flush: 1 of 2 CID(s) went out without video: "
                                                      f"{error}")


@pytest.mark.slow
def test_flush_that_finds_a_queued_video_gone_on_its_turn_says_its_cid_went_out_without_it(tmp_path: Path) -> None:
    """The video vanishes while the flush runs (after the spool's start-up check): the uploader sends the
    CID alone, and the flush counts it from the uploader's own status, exit 1 as for any CID without video.
    The first upload is held until the file is gone; the second clip waits behind it (order is kept)."""
    clips = queue(tmp_path, 2)
    with FlakyServer(["stall"], stall_s=1.0) as server:
        flush = agent_process.popen(["spool", "flush", "--timeout", "30", "--config",
                                     str(write_config(tmp_path, server.url))],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert server.post_started.wait(30)  # the first clip's upload, held: the spool has started
        later = clips[1][0]
        (tmp_path / "spool" / "clips" / f"{later}.mp4").unlink()
        out, err = flush.communicate(timeout=60)
        delivered = dict(server.delivered)
    assert flush.returncode == 1, err
    assert out.strip() == "delivered 2 clip(s); the spool is empty"
    assert delivered[later].filename is None  # its CID went out alone
    assert err.strip().splitlines()[-1] == ("edge-agent spool flush: 1 of 2 CID(s) went out without video: the queued "
                                            "video was damaged or gone")


def _stale_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two clips queued now on a clock 400 days behind and not synchronised (a Pi without its RTC, before
    NTP), then the clock corrected: the wall-clock stamps say 9600 h, which is not their age."""
    monkeypatch.setenv("EDGE_AGENT_CLOCK_SYNCED", "0")
    spool = Spool(spool_config(tmp_path / "spool"), wall=lambda: time.time() - 400 * 86_400)
    add_clip(spool)
    add_clip(spool)
    spool.close()
    monkeypatch.setenv("EDGE_AGENT_CLOCK_SYNCED", "1")
    return write_config(tmp_path, "http://127.0.0.1:9/cid")


def test_status_and_list_age_clips_by_the_spools_rule_not_a_stale_wall_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_process: Cli) -> None:
    cfg = _stale_spool(tmp_path, monkeypatch)
    status = in_process("spool", "status", "--config", str(cfg))
    assert status.returncode == 0, status.stderr
    oldest = next(line for line in status.stdout.splitlines() if line.startswith("oldest"))
    assert re.fullmatch(r"oldest +\d+ s old", oldest), oldest  # queued this boot: the monotonic clock's age
    doc = json.loads(in_process("spool", "status", "--json", "--config", str(cfg)).stdout)
    assert 0 <= doc["oldest_age_s"] < 60, doc
    rows = json.loads(in_process("spool", "list", "--json", "--config", str(cfg)).stdout)
    assert [0 <= r["age_s"] < 60 for r in rows] == [True, True], rows
    listing = in_process("spool", "list", "--config", str(cfg)).stdout
    assert " h " not in listing and "CID-" in listing, listing


@pytest.mark.slow
def test_after_a_reboot_a_clip_stamped_under_an_unsynchronised_clock_has_an_unknown_age(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Across a reboot only a wall clock synchronised then and now tells an age: these were stamped
    unsynchronised, so nobody can tell, and status says that rather than 9600 h."""
    from tests.clock_env import Boot, agent_argv, require_boots

    require_boots(tmp_path)
    cfg = _stale_spool(tmp_path, monkeypatch)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(Boot(tmp_path).argv(agent_argv("spool", "status", "--config", str(cfg))), env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    oldest = next(line for line in res.stdout.splitlines() if line.startswith("oldest"))
    assert oldest.split(None, 1)[1] == "age unknown (queued under an unsynchronised clock before this boot)"
    res = subprocess.run(Boot(tmp_path).argv(agent_argv("spool", "list", "--json", "--config", str(cfg))), env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert [r["age_s"] for r in json.loads(res.stdout)] == [None, None]
