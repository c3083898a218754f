"""How fast the web password can be guessed: `edge-agent run` with `http.password_file`, attacked twice.

    python benchmarks/login_guesses.py [--seconds 20] [--addresses 60] [--per-address 10]

1. Many addresses (a guesser with a network of its own; here loopback aliases 127.0.0.1-60): each
   sends --per-address wrong passwords, spread over the addresses as fast as the server answers,
   then a new address brings the right one. Every address stays within its own free tries, so only
   the budget of every address together (edge_agent/service/http_limits.py, GLOBAL_FREE_FAILURES)
   can hold them: MISS unless at least 90% are refused unchecked (429) and the right password is
   held too (a 200 would tell the guesser it had found it). The server checked all 600 before.
2. One client sending wrong passwords back to back on a keep-alive connection for --seconds:
   FREE_FAILURES, then one guess per wait, the wait doubling from 1 s to 60 s: at most 15 in the
   first 20 s, 75 in an hour. MISS when more were checked than that allows.

Prints the counts and rates, and exits 1 on a miss.
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
from tests.web_fixture import basic_get  # noqa: E402

RIGHT = "the-right-one"
VIDEO = ROOT / "sample_media" / "conveyor_720p30.mp4"
HELD_SHARE = 0.9  # of the many addresses' guesses, at least this share must be refused unchecked


def allowed(seconds: float) -> int:
    """Guesses the back-off lets through in `seconds` (one of slack for a wait ending at the edge)."""
    n, t, wait = FREE_FAILURES, 0.0, BACKOFF_START_S
    while t + wait <= seconds:
        n, t, wait = n + 1, t + wait, min(wait * 2, BACKOFF_CAP_S)
    return n + 1


def password_file() -> Path:
    pw = Path(tempfile.mkdtemp(prefix="login-guesses-")) / "pw"
    pw.write_text(RIGHT + "\n", encoding="utf-8")
    pw.chmod(0o600)  # the agent refuses a secret file others can read
    return pw


def many_addresses(addresses: int, per_address: int) -> bool:
    with web_daemon("login-guesses-", VIDEO, http_extra=f"  password_file: {password_file()}\n") as daemon:
        started = time.monotonic()
        replies = [basic_get(daemon.port, "/api/status", f"guess-{n}", f"127.0.0.{n % addresses + 1}", "guesser").status
                   for n in range(addresses * per_address)]
        elapsed = time.monotonic() - started
        right = basic_get(daemon.port, "/api/status", RIGHT, f"127.0.0.{addresses + 1}", "guesser").status
    checked, held = replies.count(401), replies.count(429)
    lines = [line for line in daemon.log.read_text().splitlines() if "web logins held for every address" in line]
    print(f"{len(replies)} guesses from {addresses} addresses in {elapsed:.2f} s: {checked} checked (401), {held} "
          f"refused unchecked (429), {held / len(replies):.0%}; the right password from a new address then: "
          f"HTTP {right}; log: {len(lines)} 'held for every address' line(s)")
    ok = held >= HELD_SHARE * len(replies) and right == 429 and set(replies) <= {401, 429}
    if not ok:
        print(f"MISS: want at least {HELD_SHARE:.0%} refused unchecked and the right password held (429)",
              file=sys.stderr)
    return ok


def one_client(seconds: float) -> bool:
    checked = refused = 0
    with web_daemon("login-guesses-", VIDEO, http_extra=f"  password_file: {password_file()}\n") as daemon:
        url = f"{daemon.url}/api/status"
        session = requests.Session()
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            n += 1
            status = session.get(url, auth=("admin", f"guess-{n}"), timeout=10).status_code
            if status == 401:
                checked += 1
            elif status == 429:
                refused += 1
            else:
                print(f"unexpected reply {status}", file=sys.stderr)
                return False
        elapsed = time.monotonic() - started
    print(f"{checked} guesses checked, {refused} refused unchecked (429) in {elapsed:.1f} s from one client: "
          f"{checked / elapsed:.2f} guesses/s")
    lines = [line for line in daemon.log.read_text().splitlines() if "login failed" in line]
    print(f"log: {len(lines)} 'login failed' line(s) for {checked + refused} wrong requests")
    if checked > allowed(elapsed):
        print(f"MISS: {checked} guesses checked, the back-off allows {allowed(elapsed)} in {elapsed:.0f} s",
              file=sys.stderr)
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="the one client's guessing time")
    ap.add_argument("--addresses", type=int, default=60, help="loopback addresses guessing at once (at most 250)")
    ap.add_argument("--per-address", type=int, default=FREE_FAILURES, help="wrong passwords each address sends")
    args = ap.parse_args()
    ok = many_addresses(min(args.addresses, 250), args.per_address)
    return 0 if one_client(args.seconds) and ok else 1


if __name__ == "__main__":
    sys.exit(main())
