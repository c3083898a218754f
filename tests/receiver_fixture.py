"""A real reference receiver in a process of its own on 127.0.0.1, for tests that need an edge server.

The process is forked from a server that has already imported FastAPI and uvicorn (multiprocessing's
forkserver, started once per test process): the suite starts some sixty receivers, and importing them
cost each one about a CPU-second before it could listen. What runs after the fork is what
`python -m edge_agent.receiver ARGS` runs: the same `main`, its own pid, signals, stdout and stderr."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

_HANDED_OUT: set[int] = set()
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["edge_agent.receiver.app", "edge_agent.receiver.cli", "uvicorn"])


def _serve(argv: list[str], env: dict[str, str], log: str) -> None:
    """The receiver's process: stdout and stderr to `log`, the environment it was given, then main()."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    from edge_agent.receiver.cli import main

    sys.exit(main(argv))


class _Forked:
    """The part of subprocess.Popen's interface the tests use, for a process from the fork server."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self._p = _FORKSERVER.Process(target=_serve, args=(argv, env, str(log)), daemon=False)
        self._p.start()
        self.pid = self._p.pid

    def poll(self) -> int | None:
        return self._p.exitcode

    def send_signal(self, sig: int) -> None:
        if self._p.exitcode is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        self._p.join(timeout)
        if self._p.exitcode is None:
            raise subprocess.TimeoutExpired(["edge_agent.receiver"], timeout or 0)
        return self._p.exitcode

    def kill(self) -> None:
        self._p.kill()


def free_port() -> int:
    """A free port on 127.0.0.1, never the same twice in one test run: two ports asked for before
    either is bound (a receiver's and a daemon's) would otherwise often be the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class ReceiverProcess:
    """`python -m edge_agent.receiver` on a free port; `with ReceiverProcess(dir) as r: r.cid_url`."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None,
                 max_bytes: int | None = None):
        self.data_dir = Path(data_dir)
        self.env = env or {}
        self.port = port or free_port()
        self.max_bytes = max_bytes
        self.proc: _Forked | None = None
        self.log = self.data_dir / "receiver.log"
        self.extra_args: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cid_url(self) -> str:
        return f"{self.url}/cid"

    def start(self) -> ReceiverProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = ["--port", str(self.port), "--data-dir", str(self.data_dir), "--log-level", "WARNING"]
        if self.max_bytes:
            argv += ["--max-bytes", str(self.max_bytes)]
        argv += self.extra_args
        self.proc = _Forked(argv, {**os.environ, **self.env}, self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("receiver did not come up in 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _pages(self, path: str, key: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = requests.get(f"{self.url}{path}", params={"skip": len(out), "limit": 1000}, timeout=10).json()
            out += page[key]
            if len(out) >= page["total"] or not page[key]:
                return out

    def events(self) -> list[dict[str, Any]]:
        return self._pages("/cid/list", "events")

    def ldos(self) -> list[dict[str, Any]]:
        return self._pages("/ingest/list", "ldos")

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def receiver(tmp_path: Path) -> Any:
    with ReceiverProcess(tmp_path / "receiver") as r:
        yield r
