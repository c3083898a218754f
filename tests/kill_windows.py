"""Where a kill -9 of a delivering process lands: in a window chosen through the server, not left to a
random sleep, so a few rounds cover what many random ones only probably would.

- `mid-body`: the server has half the body and waits; the clip must stay queued and be sent again whole.
- `stored-unanswered`: the server stored the clip and holds its reply back; the agent cannot know, so
  the clip is sent again and must carry the same idempotency key (the server answers 409).
- `any`: a random moment (seeded), for what the two above do not name (between a reply and the
  spool's deletes, between two clips).
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable

from tests.flaky_server import FlakyServer

WINDOWS = ("mid-body", "stored-unanswered", "any")


def arm(server: FlakyServer, window: str) -> Callable[[], bool]:
    """Script the server's next POST for `window`; returns whether that window is now open."""
    first = len(server.seen)
    if window == "mid-body":
        server.script = ["stall_mid_body"]
        return lambda: any(s.action == "stall_mid_body" for s in server.seen[first:])
    if window == "stored-unanswered":
        server.script = ["stored_then_stall"]
        return lambda: any(s.action == "stored_then_stall" and s.key in server.delivered
                           for s in server.seen[first:])
    raise ValueError(window)


def kill_in(proc: subprocess.Popen, server: FlakyServer, window: str, rng: random.Random,
            any_s: tuple[float, float]) -> bool:
    """SIGKILL `proc` in `window` (`any`: after a random delay in `any_s`); True if it was still running."""
    if window == "any":
        time.sleep(rng.uniform(*any_s))
    else:
        is_open = arm(server, window)
        deadline = time.monotonic() + 30
        while not is_open() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert is_open(), f"the {window} window never opened"
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    server.script = []
    return killed
