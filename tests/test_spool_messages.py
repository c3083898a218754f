"""What a technician reads from `edge-agent spool flush|status|list`, run as real subprocesses against a
real server: a refused clip is quarantined with one log line that says what to fix and to requeue,
`status` and `list` show it with its reason, and `flush` says what happened and why clips still wait."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.delivery.spool import Spool
from tests import agent_process
from tests.flaky_server import FlakyServer
from tests.receiver_fixture import free_port
from tests.spool_helpers import add_clip, spool_config


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
