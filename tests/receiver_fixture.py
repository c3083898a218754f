"""A real reference receiver in a process of its own on 127.0.0.1, for tests that need an edge server.

The process is forked from a server that has already imported FastAPI and uvicorn (tests/agent_process.py):
the suite starts some sixty receivers, and importing them cost each one about a CPU-second before it could
listen. What runs after the fork is what `python -m edge_agent.receiver ARGS` runs: the same `main`, its own
pid, signals, stdout and stderr."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.agent_process import AgentProcess

_HANDED_OUT: set[int] = set()


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
        self.proc: AgentProcess | None = None
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
        with self.log.open("ab") as log:
            self.proc = AgentProcess(argv, program="receiver", env={**os.environ, **self.env}, stdout=log,
                                     stderr=log)
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
