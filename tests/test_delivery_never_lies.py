"""Delivery that never lies, through real processes: the spool commands beside a live agent change
nothing, a redirect is never taken for delivery, every upload ends by its deadline, a full disk is
not corruption, and a clip whose video is lost still delivers its CID."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.cli import main
from edge_agent.config import Config
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import Uploader
from edge_agent.metrics import Metrics
from tests import agent_process
from tests.flaky_server import FlakyServer
from tests.receiver_fixture import ReceiverProcess
from tests.spool_helpers import add_clip, fast_upload, fill, small_filesystem, spool_config
from tests.test_daemon import wait_until

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_media" / "conveyor_720p30.mp4"


def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return agent_process.run([*argv], capture_output=True, text=True,
                             timeout=timeout, check=False)


def config(tmp_path: Path, url: str | None, spool_dir: Path | None = None, extra: str = "") -> Path:
    cfg = tmp_path / "config.yaml"
    upload = (f"upload:\n  url: {url}\n  backoff_base_s: 0.05\n  backoff_cap_s: 0.2\n  read_timeout_s: 2\n"
              f"  connect_timeout_s: 1\n") if url else ""
    cfg.write_text(f"{upload}spool:\n  dir: {spool_dir or tmp_path / 'spool'}\n  min_free_bytes: 0\n{extra}")
    return cfg


# --- deadlines -------------------------------------------------------------------------------------


def queue_clips(tmp_path: Path, n: int = 2) -> list[str]:
    spool = Spool(spool_config(tmp_path / "spool"))
    ids = [add_clip(spool)[0] for _ in range(n)]
    spool.close()
    return ids


def queued(tmp_path: Path) -> list[str]:
    return [e.event_id for e in Spool.open_reader(spool_config(tmp_path / "spool")).entries()]


def trickle_config(tmp_path: Path, url: str) -> Path:
    """read_timeout_s 30: each recv gets a byte in time, only an overall deadline (or a stop) ends it."""
    cfg = config(tmp_path, url, extra="")
    cfg.write_text(cfg.read_text().replace("read_timeout_s: 2", "read_timeout_s: 30"))
    return cfg


@pytest.mark.slow
def test_flush_against_a_trickling_server_returns_within_its_timeout_and_keeps_the_clips(tmp_path: Path) -> None:
    ids = queue_clips(tmp_path)
    # 0.1 s a byte: the status line "201 Created" is in before the deadline, the headers are not; a
    # reply cut short by the deadline must never count as delivered
    with FlakyServer(["trickle"] * 20, stall_s=60, trickle_s=0.1) as server:
        cfg = trickle_config(tmp_path, server.url)
        started = time.monotonic()
        res = cli("spool", "flush", "--timeout", "3.5", "--config", str(cfg))
        took = time.monotonic() - started
    assert res.returncode == 75, res.stderr
    assert took < 3.5 + 2 + 1.5, f"flush --timeout 3.5 took {took:.1f} s"  # + interpreter start-up
    assert "Traceback" not in res.stderr and "delivered 0 clip(s); 2 clip(s) still queued" in res.stderr
    assert queued(tmp_path) == ids


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_a_flush_keeps_the_clips_queued_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    """A technician (or the service manager) stops a flush stuck on a slow server: the upload in
    flight is cut, never counted as delivered, the clips stay queued, and a requested stop is 0. The flush
    starts with SIGINT ignored, as a background job (`... &` in a script) does: Ctrl-C or `kill -INT`
    still stops it, as it stops every other command."""
    ids = queue_clips(tmp_path)
    with FlakyServer(["trickle"] * 20, stall_s=60, trickle_s=0.3) as server:
        cfg = trickle_config(tmp_path, server.url)
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "spool", "flush", "--timeout", "60",
                                 "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        wait_until(lambda: server.seen, 30, "the first upload")  # in, its reply trickling
        started = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    assert proc.returncode == 0, err
    assert took < 5, f"flush took {took:.1f} s to stop"
    assert "Traceback" not in err and "delivered 0 clip(s); 2 clip(s) still queued" in err
    assert queued(tmp_path) == ids


def test_a_hung_reply_ends_at_the_uploads_own_deadline(tmp_path: Path) -> None:
    """Without a caller's deadline (the daemon), connect + read_timeout_s + size / min_rate bounds the
    whole request even when every recv gets a byte in time."""
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    with FlakyServer(["trickle"], stall_s=60, trickle_s=0.3) as server:
        up = Uploader(spool, fast_upload(server.url, read_timeout_s=1.0, connect_timeout_s=0.5), Metrics(),
                      __version__)
        entry = spool.head()
        assert entry is not None
        started = time.monotonic()
        assert up.attempt(entry) == "retry"
        assert time.monotonic() - started < 1.5 + 1.0
    head = spool.head()
    assert head is not None and head.last_error is not None and head.last_error.startswith("timed out")


def test_stop_cuts_a_reply_that_never_ends(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    with FlakyServer(["trickle"], stall_s=60, trickle_s=0.3) as server:
        up = Uploader(spool, fast_upload(server.url, read_timeout_s=60.0), Metrics(), __version__)
        up.start()
        deadline = time.monotonic() + 5
        while not server.seen and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        up.stop(timeout=5)
        assert time.monotonic() - started < 1.0
    assert spool.head() is not None and spool.head().attempts == 0  # type: ignore[union-attr]


# --- redirects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_a_page_that_answers_200_is_never_taken_for_delivery(tmp_path: Path, status: int) -> None:
    spool = Spool(spool_config(tmp_path))
    ids = [add_clip(spool)[0] for _ in range(3)]
    with FlakyServer([(status, {"Location": "/healthz"})] * 100) as moved:
        up = Uploader(spool, fast_upload(moved.url), Metrics(), __version__)
        assert not up.drain(1.0)
        assert moved.delivered == {} and moved.gets == []  # the POST was not turned into a GET
    head = spool.head()
    assert head is not None and head.event_id == ids[0]
    target = moved.url.removesuffix("/cid") + "/healthz"
    assert f"HTTP {status} redirect to {target}: set upload.url" in (head.last_error or "")
    with FlakyServer() as fixed:  # the technician sets upload.url to the right place
        up.apply(Config().model_copy(update={"upload": fast_upload(fixed.url)}), frozenset({"upload.url"}))
        assert up.drain(10)
        assert list(fixed.delivered) == ids


# --- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    with small_filesystem(tmp_path / "small", "4m") as mnt:
        yield mnt


@pytest.mark.slow
def test_a_100_percent_full_spool_disk_is_not_corruption(full_fs: Path, tmp_path: Path) -> None:
    spool_dir = full_fs / "spool"
    spool = Spool(spool_config(spool_dir))
    ids = [add_clip(spool, size=300_000)[0] for _ in range(4)]
    spool.close()
    fill(full_fs / "ballast")
    assert shutil.disk_usage(full_fs).free < 8192
    queue_file = spool_dir / "queue.sqlite3"
    inode = queue_file.stat().st_ino
    with FlakyServer([503] * 1000) as down:
        cfg = config(tmp_path, down.url, spool_dir)
        status = cli("spool", "status", "--config", str(cfg))
        flush = cli("spool", "flush", "--timeout", "1", "--config", str(cfg))
    for res in (status, flush):
        assert "Traceback" not in res.stderr, res.stderr
    assert status.returncode == 73 and "spool disk full (0 MiB free, 1 MiB queued)" in status.stderr
    assert re.search(r"reads waiting +4\n", status.stdout)
    assert flush.returncode == 75 and "spool disk full" in flush.stderr and "HTTP 503" in flush.stderr
    assert queue_file.stat().st_ino == inode  # the healthy queue file stayed where it was
    assert not list((spool_dir / "quarantine").iterdir())
    (full_fs / "ballast").unlink()  # room is made
    with FlakyServer() as up:
        flush = cli("spool", "flush", "--timeout", "20", "--config", str(config(tmp_path, up.url, spool_dir)))
        assert flush.returncode == 0, flush.stderr
        assert sorted(up.delivered) == sorted(ids)
        assert len([s for s in up.seen if s.complete]) == len(ids)  # each once


def test_two_damaged_queue_files_in_one_second_are_both_kept(tmp_path: Path) -> None:
    for _ in range(2):
        spool = Spool(spool_config(tmp_path))
        spool.close()
        (tmp_path / "queue.sqlite3").write_bytes(b"garbage" * 1000)
        for suffix in ("-wal", "-shm"):
            Path(str(tmp_path / "queue.sqlite3") + suffix).unlink(missing_ok=True)
        Spool(spool_config(tmp_path)).close()
    assert len(list((tmp_path / "quarantine").glob("queue.sqlite3.corrupt-*"))) == 2


# --- the spool commands beside a live agent --------------------------------------------------------


def start_agent(tmp_path: Path, url: str) -> agent_process.AgentProcess:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"device_id: live-cam\nsource:\n  kind: file\n  path: {SAMPLE}\n  loop: true\n"
        f"upload:\n  url: {url}\n  backoff_base_s: 0.2\nspool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\n"
        "clip:\n  pre_roll_s: 1\n  post_roll_s: 1\n", encoding="utf-8")
    return agent_process.popen(["run", "--config", str(cfg)],
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "wb"),
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_spool_commands_beside_a_live_agent_lose_nothing(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`spool status`/`list` in a loop and a `flush` beside a live `run`: no clip-worker error, nothing
    quarantined, every upload carries its video, no key sent twice."""
    with ReceiverProcess(tmp_path / "receiver") as receiver:
        cfg = config(tmp_path, receiver.cid_url)
        agent = start_agent(tmp_path, receiver.cid_url)
        try:
            wait_until(lambda: len(receiver.events()) >= 1, 60, "a first delivery")
            # a number of runs, however long they take (a wall-clock window gives fewer on a loaded machine);
            # in this process: the commands' own code against the agent's spool, without an interpreter
            # start each (the agent is the other process that matters)
            for _ in range(int(os.environ.get("EDGE_AGENT_TEST_LIVE_RUNS", "5"))):  # 25 for the figure
                for action in ("status", "list"):
                    code = main(["spool", action, "--config", str(cfg)])
                    err = capsys.readouterr().err
                    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
            flush = cli("spool", "flush", "--timeout", "5", "--config", str(cfg))
            assert "is running" in flush.stderr and "Traceback" not in flush.stderr
            wait_until(lambda: len(receiver.events()) >= 3, 60, "three deliveries")
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(20) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
        log = (tmp_path / "agent.log").read_text()
        events = receiver.events()
    assert "clip worker failed" not in log and "Traceback" not in log, log
    assert "quarantined" not in log
    assert not list((tmp_path / "spool" / "quarantine").iterdir())
    assert len(events) >= 3
    assert all(e["size_bytes"] and e["sha256_ok"] for e in events), events
    assert all(e["requests"] == 1 for e in events)  # the flush did not race the agent for a clip
    # every clip made is delivered or waits, and nothing else is: sets, not counts, since a clip whose
    # upload the stop cut after the server had it all is both (it goes again and gets a 409)
    reader = Spool.open_reader(spool_config(tmp_path / "spool"))
    left = {e.event_id for e in reader.entries()}
    reader.close()
    queued = set(re.findall(r"\bqueued cid=\S+ clip=(\S+)", log))
    assert queued and {e["event_id"] for e in events} | left == queued, (queued, left, events)


@pytest.mark.slow
def test_requeue_beside_a_live_agent_asks_the_agent(tmp_path: Path) -> None:
    cfg = config(tmp_path, None)
    with FlakyServer([(422, {}, b'{"detail": "bad"}')] + ["ok"] * 1000) as server:
        agent = start_agent(tmp_path, server.url)
        try:
            wait_until(lambda: list((tmp_path / "spool" / "quarantine").glob("*.reason")), 60, "a quarantined clip")
            res = cli("spool", "requeue", "--config", str(cfg))
            assert res.returncode == 0 and "requeued 1 clip(s)" in res.stdout, res.stderr
            first = server.seen[0].key
            wait_until(lambda: first in server.delivered, 30, "the requeued clip delivered")
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
    assert "requeued 1 clip(s) at the request of `edge-agent spool requeue`" in (tmp_path / "agent.log").read_text()
