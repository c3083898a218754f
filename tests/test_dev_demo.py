"""`./dev.sh demo` starts its own local edge server on a port the OS gives it (or DEMO_PORT), and fails
at once, in one line, when that server does not come up: another program answering on the port must
not pass for it (the demo would queue its clips and deliver none). Real script, real servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.media_factory import make_video

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)

pytestmark = [
    pytest.mark.skipif(not (VENV / ".dev-installed").exists()
                       or (VENV / ".dev-installed").stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime,
                       reason="the venv was not set up by ./dev.sh (the demo would reinstall it from the index)"),
    pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="runs in a venv, as dev.sh makes one"),
]


class _AnythingOk(BaseHTTPRequestHandler):
    """Another program on the port: answers 200 to every request, /healthz included."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_GET  # noqa: N815

    def log_message(self, *_a: object) -> None:
        pass


@pytest.fixture
def squatter() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AnythingOk)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def demo(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT", "DEMO_"))}
    return subprocess.run([str(ROOT / "dev.sh"), "demo", *args], capture_output=True, text=True, timeout=300,
                          check=False, env={**base, "VENV": str(VENV), "DEMO_DATA": str(tmp_path / "demo"), **env})


@pytest.mark.slow
def test_demo_fails_in_one_line_when_its_server_cannot_take_the_port(squatter: int, tmp_path: Path) -> None:
    res = demo(tmp_path, DEMO_PORT=str(squatter))
    assert res.returncode == 1, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dev.sh demo: the local edge server did not come up on 127.0.0.1:{squatter}: "), last
    assert "address already in use" in last and "DEMO_PORT=" in last
    assert not (tmp_path / "demo" / "spool").exists()  # nothing replayed into the other program


@pytest.mark.slow
def test_demo_takes_a_free_port_and_delivers(tmp_path: Path) -> None:
    video = make_video(tmp_path / "one.mp4", seconds=2.0, size=(320, 240), codes=[("DEMO-1", 0.2, 1.5)], scale=4)
    with socket.socket() as busy:  # the port the demo used to take whatever else listened there
        try:
            busy.bind(("127.0.0.1", 8765))
            busy.listen()
        except OSError:
            pass  # something already has it: just as good
        res = demo(tmp_path, str(video))
    assert res.returncode == 0, res.stdout + res.stderr
    up = next(ln for ln in res.stdout.splitlines() if ln.startswith("local edge server on http://127.0.0.1:"))
    assert not up.startswith("local edge server on http://127.0.0.1:8765 ")
    assert "DEMO-1" in res.stdout and f"1 CID(s) stored under {tmp_path / 'demo'}/receiver" in res.stdout
