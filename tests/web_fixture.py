"""A real `edge-agent run` (or `tune --web`) with its web server on a free loopback port."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests import agent_process
from tests.receiver_fixture import free_port

ROOT = Path(__file__).resolve().parent.parent
HARD = ROOT / "sample_media" / "hard_codes_720p30.mp4"
CONVEYOR = ROOT / "sample_media" / "conveyor_720p30.mp4"
PASSWORD = "s3cret-Pa55"


class Web:
    """`edge-agent <args>` with a config naming a file source replayed in real time (or the `source:` block
    given) and `http:` lines."""

    def __init__(self, tmp_path: Path, video: Path = CONVEYOR, http: str = "", *, command: tuple[str, ...] = ("run",),
                 loop: bool = False, password: bool = False, tls: tuple[Path, Path] | None = None,
                 source: str | None = None):
        self.tmp = tmp_path
        self.port = free_port()
        if password:
            (tmp_path / "http-password").write_text(PASSWORD + "\n", encoding="utf-8")
            (tmp_path / "http-password").chmod(0o600)  # a secret file must be private, or the agent refuses it
            http += f"  password_file: {tmp_path / 'http-password'}\n"
        if tls:
            http += f"  cert_file: {tls[0]}\n  key_file: {tls[1]}\n"
        self.verify: str | bool = str(tls[0]) if tls else True
        self.config = tmp_path / "config.yaml"
        source = source or (f"source:\n  kind: file\n  path: {video}\n  realtime: true\n"
                            f"  loop: {'true' if loop else 'false'}\n")
        self.config.write_text(
            f"device_id: web-test\n{source}"
            f"spool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\n"
            f"http:\n  port: {self.port}\n{http}", encoding="utf-8")
        self.log = tmp_path / "web.log"
        with open(tmp_path / "web.out", "wb") as out, open(self.log, "wb") as err:
            self.proc = agent_process.popen([*command, "--config",
                                             str(self.config)], stdout=out, stderr=err,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20) -> Web:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                requests.get(self.url + "/healthz", timeout=1, verify=self.verify)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        self.proc.kill()  # `with` never reaches __exit__ when __enter__ fails: no daemon left behind
        self.proc.wait()
        raise AssertionError(f"web server not up in {timeout} s: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def __enter__(self) -> Web:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_for(cond, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def basic_get(port: int, path: str, password: str | None, source: str = "127.0.0.1",
              user: str = "tech") -> http.client.HTTPResponse:
    """GET `path` on a fresh connection from `source` (a loopback alias: another client's address), as `user`
    with `password` (HTTP Basic; None: no Authorization header); the answer, its body read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        headers = {}
        if password is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp
    finally:
        conn.close()
