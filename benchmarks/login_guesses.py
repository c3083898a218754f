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
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.web_daemon import web_daemon  # noqa: E402
from edge_agent.service.http_limits import BACKOFF_CAP_S, BACKOFF_START_S, FREE_FAILURES  # noqa: E402


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
    pw = Path(tempfile.mkdtemp(prefix="login-guesses-")) / "pw"
    pw.write_text("the-right-one\n", encoding="utf-8")
    checked = refused = 0
    video = ROOT / "sample_media" / "conveyor_720p30.mp4"
    with web_daemon("login-guesses-", video, http_extra=f"  password_file: {pw}\n") as daemon:
        url = f"{daemon.url}/api/status"
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
    rate = checked / elapsed
    print(f"{checked} guesses checked, {refused} refused unchecked (429) in {elapsed:.1f} s from one client: "
          f"{rate:.2f} guesses/s")
    lines = [line for line in daemon.log.read_text().splitlines() if "login failed" in line]
    print(f"log: {len(lines)} 'login failed' line(s) for {checked + refused} wrong requests")
    if checked > allowed(elapsed):
        print(f"MISS: {checked} guesses checked, the back-off allows {allowed(elapsed)} in {elapsed:.0f} s",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
