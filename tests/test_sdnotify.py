"""sd_notify over a real unix datagram socket, as systemd listens: both a path socket and an
abstract one (`@name`), the messages systemd understands, and silence outside systemd."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.service.sdnotify import Notifier

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """(NOTIFY_SOCKET value, the bound socket) - what systemd creates for a Type=notify service."""
    if request.param == "path":
        value, addr = str(tmp_path / "notify.sock"), str(tmp_path / "notify.sock")
    else:
        value = f"@edge-agent-test-{os.getpid()}-{time.monotonic_ns()}"
        addr = b"\0" + value[1:].encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(addr)
        s.settimeout(2)
        yield value, s


def received(s: socket.socket, n: int) -> list[str]:
    return [s.recv(4096).decode() for _ in range(n)]


def test_ready_status_watchdog_stopping_reach_the_socket(listener: tuple[str, socket.socket]) -> None:
    value, s = listener
    n = Notifier({"NOTIFY_SOCKET": value})
    assert n.enabled
    assert n.ready() and n.status("fps=30.0 queued=2 dropped=0") and n.watchdog() and n.stopping()
    assert received(s, 4) == ["READY=1", "STATUS=fps=30.0 queued=2 dropped=0", "WATCHDOG=1", "STOPPING=1"]


def test_reloading_carries_the_monotonic_clock(listener: tuple[str, socket.socket]) -> None:
    value, s = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier({"NOTIFY_SOCKET": value}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = dict(line.split("=", 1) for line in received(s, 1)[0].splitlines())
    assert lines["RELOADING"] == "1"
    assert before <= int(lines["MONOTONIC_USEC"]) <= after


def test_several_fields_go_in_one_datagram_and_a_newline_cannot_forge_a_field(
        listener: tuple[str, socket.socket]) -> None:
    value, s = listener
    n = Notifier({"NOTIFY_SOCKET": value})
    assert n.notify(STATUS="camera lost\nREADY=1", ERRNO=5)
    assert received(s, 1) == ["STATUS=camera lost READY=1\nERRNO=5"]


def test_a_real_process_reads_notify_socket_from_its_environment(listener: tuple[str, socket.socket]) -> None:
    value, s = listener
    code = "from edge_agent.service.sdnotify import Notifier; n = Notifier(); assert n.ready() and n.watchdog()"
    env = {**os.environ, "NOTIFY_SOCKET": value}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=30)
    assert received(s, 2) == ["READY=1", "WATCHDOG=1"]


def test_outside_systemd_every_call_is_a_silent_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not any([n.ready(), n.status("x"), n.watchdog(), n.reloading(), n.stopping(), n.notify(A=1)])
    assert n.watchdog_interval_s() is None and n.ping_interval_s() is None


def test_a_dead_socket_never_raises_and_is_logged_once_at_debug(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent.service.sdnotify")
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert not n.ready() and not n.watchdog() and not n.stopping()
    failures = [r for r in caplog.records if "sd_notify failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.DEBUG


@pytest.mark.parametrize("value", ["relative/notify.sock", "vsock:2:1234", "@"])
def test_an_address_we_cannot_speak_disables_notification(value: str) -> None:
    assert not Notifier({"NOTIFY_SOCKET": value}).enabled


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "thirty"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ({}, None),
])
def test_watchdog_interval_follows_watchdog_usec_and_pid(env: dict[str, str], interval: float | None) -> None:
    n = Notifier(env)
    assert n.watchdog_interval_s() == interval
    assert n.ping_interval_s() == (interval / 2 if interval else None)
