"""Threads named as the kernel shows them (`top -H`, `ps -L`, /proc/PID/task/TID/comm).

Python names its threads for itself only: the kernel sees every one as the interpreter. Named, an
operator's `top -H -p $(pidof edge-agent)` shows which stage takes the CPU (decode, detect, clip,
uploader) beside FFmpeg's own `av:h264:...` workers, and benchmarks/live_benchmark.py prints the
daemon's CPU by stage from the same names.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

PR_SET_NAME = 15  # <linux/prctl.h>
COMM_BYTES = 15  # the kernel keeps this many bytes of a name


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the kernel (its first 15 bytes); nothing off Linux."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # no prctl in this libc: names are a convenience
        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:COMM_BYTES]), 0, 0, 0)
