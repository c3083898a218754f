"""Requests from a command to the spool's owner (the running agent), through files in the spool.

A command never moves the owner's files itself: `spool requeue` beside the running agent leaves a
request file, and the owner answers it from its uploader's loop with how many clips it requeued.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

# Files by which `spool requeue` asks the running agent to requeue, and its answer.
REQUEUE_REQUEST = "requeue.request"
REQUEUE_ANSWER = "requeue.answer"
# how often the owner looks for a request
_CHECK_EVERY_S = 1.0


def request_requeue(root: Path, timeout_s: float) -> int | None:
    """Ask the owner to requeue quarantined clips; the count it requeued, or None if it did not answer in
    time."""
    req = root / REQUEUE_REQUEST
    answer = root / REQUEUE_ANSWER
    answer.unlink(missing_ok=True)
    req.write_text(f"{os.getpid()}\n", encoding="ascii")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not req.exists() and answer.exists():
            with contextlib.suppress(OSError, ValueError):
                n = int(answer.read_text(encoding="ascii").strip())
                answer.unlink(missing_ok=True)
                return n
        time.sleep(0.1)
    req.unlink(missing_ok=True)
    return None


class RequestChannel:
    """The owner's side: is a requeue asked for (looked at most once a second), and the answer."""

    def __init__(self, root: Path):
        self._root = root
        self._next_check = 0.0

    def requeue_asked(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + _CHECK_EVERY_S
        return (self._root / REQUEUE_REQUEST).exists()

    def answer_requeue(self, n: int) -> None:
        with contextlib.suppress(OSError):
            (self._root / REQUEUE_ANSWER).write_text(f"{n}\n", encoding="ascii")
            (self._root / REQUEUE_REQUEST).unlink()
