"""Watching a running daemon from outside: its log file and its peak memory (tests and benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for_log(path: Path, text: str, timeout: float = 20.0, after: int = 0, poll_s: float = 0.05) -> int:
    """Until `text` appears in the log past offset `after`; returns where it ends (a readiness signal,
    not a sleep). AssertionError with the log's tail when it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace")
        at = log.find(text, after)
        if at >= 0:
            return at + len(text)
        time.sleep(poll_s)
    raise AssertionError(f"{text!r} not in the log after {timeout} s:\n{path.read_text()[-2000:]}")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")
