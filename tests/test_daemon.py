"""`edge-agent run` as systemd runs it: a `pipe` source fed by a real subprocess streaming at 30 fps,
a real unix datagram socket as NOTIFY_SOCKET, real signals, clips delivered to a real receiver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from edge_agent.delivery.spool import Spool
from tests import agent_process, promtool
from tests.receiver_fixture import ReceiverProcess, free_port
from tests.spool_helpers import add_clip, crash, spool_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_media" / "conveyor_720p30.mp4"


class NotifySocket:
    """What systemd listens on: collects every datagram the service sends."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.watchdog_at: list[float] = []  # monotonic times a WATCHDOG=1 came
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:  # like systemd, always reading
            try:
                message = self.sock.recv(4096).decode()
                if "WATCHDOG=1" in message.splitlines():
                    self.watchdog_at.append(time.monotonic())
                self.messages.append(message)
            except TimeoutError:
                continue
            except OSError:
                return

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            for m in list(self.messages):
                if any(line.startswith(prefix) for line in m.splitlines()):
                    return m
        raise AssertionError(f"no {prefix!r} from the service in {timeout} s; got {self.messages}")

    def longest_watchdog_gap(self, since: float) -> float:
        """The longest time without a WATCHDOG=1 from `since` (monotonic) to now."""
        times = [since, *(t for t in self.watchdog_at if t > since), time.monotonic()]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def metrics(port: int) -> dict[str, float]:
    out = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def start_daemon(tmp_path: Path, command: str, upload_url: str, metrics_port: int, extra: str = "",
                 notify: Path | None = None, source: str | None = None) -> agent_process.AgentProcess:
    """`edge-agent run` on a pipe camera running `command` (stall_s 3), or on `source`: the source section's
    own lines, indented."""
    cfg = tmp_path / "config.yaml"
    source = source if source is not None else f"  kind: pipe\n  command: {command}\n  stall_s: 3\n"
    cfg.write_text(
        f"device_id: test-cam\nsource:\n{source}"
        f"upload:\n  url: {upload_url}\n  backoff_base_s: 0.2\nspool:\n  dir: {tmp_path / 'spool'}\n"
        f"  min_free_bytes: 0\nhttp:\n  port: {metrics_port}\n{extra}", encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if notify:
        env["NOTIFY_SOCKET"] = str(notify)
        env["WATCHDOG_USEC"] = "2000000"
    with (tmp_path / "daemon.log").open("wb") as log:
        return agent_process.popen(["run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=log, env=env)


def stop(proc: agent_process.AgentProcess | subprocess.Popen[bytes], timeout: float = 15) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def wait_until(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def streamer(*args: str) -> str:
    return f"{sys.executable} {ROOT / 'tests' / 'stream_sample.py'} {SAMPLE} {' '.join(args)}"


@pytest.mark.slow
def test_run_on_a_live_pipe_notifies_systemd_delivers_clips_and_stops_on_sigterm(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    with ReceiverProcess(tmp_path / "receiver") as receiver:
        proc = start_daemon(tmp_path, streamer("--loop"), receiver.cid_url, port, notify=notify.path)
        try:
            notify.wait_for("READY=1", 15)
            notify.wait_for("WATCHDOG=1", 5)
            notify.wait_for("STATUS=fps=", 5)
            wait_until(lambda: len(receiver.events()) >= 2, 40, "two clips delivered")
            # the server stores a clip a moment before the agent reads its reply and counts it delivered
            wait_until(lambda: metrics(port)['edge_agent_uploads_total{result="delivered"}'] >= 2, 10,
                       "the agent to count two deliveries")
            m = metrics(port)
            exposition = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        finally:
            started = time.monotonic()
            rc = stop(proc)
        assert rc == 0 and time.monotonic() - started < 15
        notify.wait_for("STOPPING=1", 2)
        cids = [e["cid"] for e in receiver.events()]
    assert m["edge_agent_frames_dropped_total"] <= 0.01 * m["edge_agent_frames_total"]  # exact 0: live benchmark
    assert m["edge_agent_frames_total"] > 300
    assert m['edge_agent_uploads_total{result="delivered"}'] >= 2
    assert cids[:2] == ["CID-7F3A9C21", "lot42.box:0007"]
    # the running agent's histograms saw the work, and Prometheus' linter accepts what it serves
    for name in ("decode", "detect", "clip", "upload", "detection_to_delivery"):
        assert m[f"edge_agent_{name}_seconds_count"] > 0, name
    assert m["edge_agent_events_total"] >= 2 and m["edge_agent_detections_total"] >= m["edge_agent_events_total"]
    assert m["process_resident_memory_bytes"] > 0
    if promtool.PROMTOOL:
        promtool.check_metrics(exposition)


@pytest.mark.slow
def test_killed_or_stalled_camera_process_is_reopened(tmp_path: Path) -> None:
    port = free_port()
    proc = start_daemon(tmp_path, streamer("--loop", "--stall-after", "4"), "http://127.0.0.1:9/cid", port)
    try:
        wait_until(lambda: _get(port, "edge_agent_frames_total") > 30, 15, "frames")
        camera = psutil.Process(proc.pid).children()[0]
        camera.kill()  # the camera process dies
        wait_until(lambda: _get(port, "edge_agent_source_restarts_total") >= 1, 15, "a reopen after the kill")
        before = _get(port, "edge_agent_frames_total")
        wait_until(lambda: _get(port, "edge_agent_frames_total") > before + 30, 15, "frames after the reopen")
        # the new camera process hangs after 4 s: the watchdog (stall_s 3) reopens it again
        wait_until(lambda: _get(port, "edge_agent_source_stalls_total") >= 1, 20, "a stall detected")
    finally:
        assert stop(proc) == 0


@pytest.mark.slow
def test_sigterm_during_a_clip_keeps_it_in_the_spool(tmp_path: Path) -> None:
    port = free_port()
    proc = start_daemon(tmp_path, streamer("--loop"), "http://127.0.0.1:9/cid", port)
    try:
        wait_until(lambda: _get(port, "edge_agent_detections_total") >= 1, 20, "a detection")
    finally:
        assert stop(proc) == 0
    # the open clip was cut short at shutdown and queued (the server is down): nothing lost
    res = agent_process.run(["spool", "list", "--json", "--config", str(tmp_path / "config.yaml")],
                            capture_output=True, text=True, check=True)
    assert '"cid": "CID-7F3A9C21"' in res.stdout


def _get(port: int, name: str) -> float:
    try:
        return metrics(port).get(name, 0.0)
    except requests.RequestException:
        return 0.0



def health(port: int) -> tuple[int, dict]:
    r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    return r.status_code, r.json()


@pytest.mark.slow
def test_a_camera_that_stays_away_keeps_the_agent_up_fed_watchdog_and_says_so(tmp_path: Path) -> None:
    """The camera command ends after 3 s and every one started after it hangs without writing (a camera
    unplugged, rpicam-vid waiting for it). The agent stays up (systemd's watchdog keeps being fed while the
    capture retries with back-off), /healthz and the metrics say the camera is away and since when, and
    the log says so once per change, not at every retry. Back, it says that once too."""
    notify = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    gone = tmp_path / "camera-gone"
    cmd = (f"{sys.executable} {ROOT / 'tests' / 'bursty_h264.py'} {SAMPLE} --burst 1 --seconds 3 "
           f"--gone-if {gone}")
    proc = start_daemon(tmp_path, "", "http://127.0.0.1:9/cid", port, notify=notify.path,
                        source=f"  kind: pipe\n  command: {cmd}\n  input_format: h264\n  stall_s: 3\n"
                        "  open_timeout_s: 2\n")
    log = tmp_path / "daemon.log"
    try:
        notify.wait_for("READY=1", 30)
        wait_until(lambda: "source ended" in log.read_text(), 30, "the camera away")
        away_from = time.monotonic()
        # three attempts to reopen it, unless the watchdog starves first
        wait_until(lambda: _get(port, "edge_agent_source_restarts_total") >= 4
                   or notify.longest_watchdog_gap(away_from) > 3, 60, "three attempts to reopen the camera")
        gap = notify.longest_watchdog_gap(away_from)
        assert gap < 2.0, f"no WATCHDOG=1 for {gap:.1f} s while the camera was away"  # WatchdogSec is 2 s here
        asked = time.time()
        status, body = health(port)
        m = metrics(port)
        text = log.read_text()
        gone.unlink()  # the camera is back
        wait_until(lambda: health(port)[1].get("source") == "up", 60, "the camera back")
        back = log.read_text()
    finally:
        assert stop(proc) == 0
    print(f"away {body['source_away_s']} s, {body['source_reopen_attempts']} attempts, longest watchdog gap "
          f"{gap:.1f} s")
    assert proc.returncode == 0
    assert status == 503 and body["source_away_s"] > 3 and body["capture_stuck"] is False
    assert abs(asked - body["source_away_s"] - body["source_away_since"]) < 1
    assert m["edge_agent_source_up"] == 0 and m["edge_agent_source_away_seconds"] > 3
    # going away (the pipe ended), then the cause changed (reopens find nothing): two lines for 3+ attempts
    assert text.count("source ended, reopening") == 1 and text.count("source unavailable") == 1, text
    assert back.count("source back after") == 1


@pytest.mark.slow
def test_a_start_after_a_crash_with_no_camera_waits_for_recovery_then_is_ready_and_says_the_camera_is_away(
        tmp_path: Path) -> None:
    """Systemd's view of a device back from a power cut whose camera is not there (yet): the spool's recovery
    (every queued clip checked) extends the start timeout and says so in STATUS=; then READY=1 comes with the
    camera away, retried in the process, not a start that times out and restarts every minute."""
    spool = Spool(spool_config(tmp_path / "spool"))
    for _ in range(3):
        add_clip(spool, size=10_000)
    crash(spool)
    notify = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    proc = start_daemon(tmp_path, "", "http://127.0.0.1:9/cid", port, notify=notify.path,
                        source=f"  kind: v4l2\n  path: {tmp_path / 'video9'}\n")
    try:
        ready = notify.wait_for("READY=1", 30)
        status = notify.wait_for("STATUS=fps=", 10)
    finally:
        assert stop(proc) == 0
    extend = next(i for i, m in enumerate(notify.messages) if "EXTEND_TIMEOUT_USEC=" in m)
    assert "STATUS=recovering the spool: 0 of 3 reads checked" in notify.messages[extend]
    assert extend < notify.messages.index(ready)
    assert "source=away(" in status
    assert "ready: the camera is away and retried" in (tmp_path / "daemon.log").read_text()


@pytest.mark.slow
def test_a_capture_thread_stuck_where_no_timeout_reaches_starves_the_watchdog(tmp_path: Path) -> None:
    """A truly hung agent is still restarted: a source read through FFmpeg's file protocol from a FIFO whose
    writer froze blocks in read(2), where neither FFmpeg's timeout nor the stall watch reaches. Past the
    bound of a read (stall_s, open_timeout_s, and the slack) the capture is stuck: said once, on /healthz,
    and WATCHDOG=1 stops so that systemd restarts the service. A stop still ends in time."""
    notify = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    fifo = tmp_path / "camera.ts"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDWR)  # a writer for as long as the test lasts: the reader never sees an EOF
    camera = subprocess.Popen([sys.executable, str(ROOT / "tests" / "stream_sample.py"), str(SAMPLE),
                               "--stall-after", "3"], stdout=held)
    log = tmp_path / "daemon.log"
    try:
        proc = start_daemon(tmp_path, "", "http://127.0.0.1:9/cid", port, notify=notify.path,
                            source=f"  kind: url\n  path: file:{fifo}\n  stall_s: 2\n  open_timeout_s: 2\n")
        try:
            notify.wait_for("READY=1", 30)
            wait_until(lambda: "capture stuck" in log.read_text(), 60, "the capture said stuck")
            stuck_from = time.monotonic()
            stuck = health(port)[1]
            wait_until(lambda: time.monotonic() - stuck_from > 4, 10, "four seconds of a stuck capture")
            gap = notify.longest_watchdog_gap(stuck_from)
        finally:
            started = time.monotonic()
            rc = stop(proc, timeout=20)
            took = time.monotonic() - started
    finally:
        camera.kill()
        camera.wait()
        os.close(held)
    text = log.read_text()
    print(f"stuck capture: no watchdog for {gap:.1f} s; stop took {took:.1f} s")
    assert stuck["capture_stuck"] is True and gap > 4
    assert text.count("capture stuck") == 1
    assert rc == 0 and took < 15 and "capture still reading" in text
