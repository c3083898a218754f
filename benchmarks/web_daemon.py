"""`edge-agent run` with its web server, for the benchmarks that measure the web side (live_viewers.py,
login_guesses.py): a sample video looped in real time as the camera, a free port, the daemon's log in
a temporary folder, and SIGTERM (then SIGKILL after 30 s) when the benchmark is done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.receiver_fixture import free_port  # noqa: E402

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WebDaemon:
    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path  # the config, the spool and daemon.log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.tmp / "daemon.log"


@contextmanager
def web_daemon(prefix: str, video: Path, http_extra: str = "", ready_path: str = "/healthz",
               ready: Callable[[requests.Response], bool] = lambda _reply: True) -> Iterator[WebDaemon]:
    """The daemon, once GET `ready_path` gives a reply `ready` accepts; exit 2 with the end of its log if
    it does not come up within a minute. `http_extra`: more lines of the `http:` section."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    config = tmp / "config.yaml"
    config.write_text(f"device_id: bench\nsource:\n  kind: file\n  path: {video.resolve()}\n  realtime: true\n"
                      f"  loop: true\nspool:\n  dir: {tmp / 'spool'}\n  min_free_bytes: 0\nhttp:\n  port: {port}\n"
                      + http_extra, encoding="utf-8")
    with (tmp / "daemon.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
                                stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    daemon = WebDaemon(proc, port, tmp)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"the daemon did not come up: {daemon.log.read_text()[-2000:]}", file=sys.stderr)
                raise SystemExit(2)
            try:
                if ready(requests.get(daemon.url + ready_path, timeout=5)):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        yield daemon
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
