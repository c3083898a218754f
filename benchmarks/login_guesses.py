"""How fast one client can guess the web password: `edge-agent run` with `http.password_file`, one
client sending wrong passwords back to back on a keep-alive connection for --seconds.

    python benchmarks/login_guesses.py [--seconds 20]

Counts the guesses the server checked (401) and those it refused unchecked while the client had to
wait (429), prints checked guesses per second, and exits 1 when more were checked than the back-off
allows (edge_agent/service/http_limits.py): FREE_FAILURES, then one guess per wait, the wait doubling
from 1 s to 60 s: at most 15 in the first 20 s, 75 in an hour (the server checked every guess before).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.service.http_limits import BACKOFF_CAP_S, BACKOFF_START_S, FREE_FAILURES  # noqa: E402
from tests.receiver_fixture import free_port  # noqa: E402


def allowed(seconds: float) -> int:
    """Guesses the back-off lets through in `seconds` (one of slack for a wait ending at the edge)."""
    n, t, wait = FREE_FAILURES, 0.0, BACKOFF_START_S
    while t + wait <= seconds:
        n, t, wait = n + 1, t + wait, min(wait * 2, BACKOFF_CAP_S)
    return n + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="login-guesses-"))
    port = free_port()
    (tmp / "pw").write_text("the-right-one\n", encoding="utf-8")
    config = tmp / "config.yaml"
    video = ROOT / "sample_media" / "conveyor_720p30.mp4"
    config.write_text(f"device_id: bench\nsource:\n  kind: file\n  path: {video}\n"
                      f"  realtime: true\n  loop: true\nspool:\n  dir: {tmp / 'spool'}\n  min_free_bytes: 0\n"
                      f"http:\n  port: {port}\n  password_file: {tmp / 'pw'}\n", encoding="utf-8")
    log = (tmp / "daemon.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)], stdout=log,
                            stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}/api/status"
    checked = refused = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"the daemon did not come up: {(tmp / 'daemon.log').read_text()[-2000:]}", file=sys.stderr)
                return 2
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.2)
        session = requests.Session()
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < args.seconds:
            n += 1
            status = session.get(url, auth=("admin", f"guess-{n}"), timeout=10).status_code
            if status == 401:
                checked += 1
            elif status == 429:
                refused += 1
            else:
                print(f"unexpected reply {status}", file=sys.stderr)
                return 2
        elapsed = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    rate = checked / elapsed
    print(f"{checked} guesses checked, {refused} refused unchecked (429) in {elapsed:.1f} s from one client: "
          f"{rate:.2f} guesses/s")
    lines = [line for line in (tmp / "daemon.log").read_text().splitlines() if "login failed" in line]
    print(f"log: {len(lines)} 'login failed' line(s) for {checked + refused} wrong requests")
    if checked > allowed(elapsed):
        print(f"MISS: {checked} guesses checked, the back-off allows {allowed(elapsed)} in {elapsed:.0f} s",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
