"""Whether the kernel's wall clock is synchronised (NTP), read as systemd's `timedatectl` reads it.

A Raspberry Pi or a Jetson has no battery-backed real-time clock: it boots with the time it saved
at shutdown (fake-hwclock) or 1970 until NTP (systemd-timesyncd, chrony) sets it. The kernel keeps
the synchronisation state in its `timex` record: `adjtimex(2)` with `modes = 0` reads it without
privileges. systemd (`ntp_synced()` in its time-util.c) calls the clock synchronised when the
reported maximum error is below 16 s, the value the kernel holds while nobody disciplines the clock,
and ignores `STA_UNSYNC` (some set it only to keep the kernel off the RTC). We use the same rule so
`check`, the metric and the clip metadata agree with `timedatectl`.

`EDGE_AGENT_CLOCK_SYNCED=1|0` overrides the reading: for a clock disciplined where the kernel cannot
see it (PTP in user space, a GPS daemon that does not use adjtimex) and for tests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

# The kernel's "nobody disciplines this clock" maximum error is NTP_PHASE_LIMIT = 16 s (in µs).
_UNSYNCED_MAXERROR_US = 16_000_000
OVERRIDE_ENV = "EDGE_AGENT_CLOCK_SYNCED"


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex of <sys/timex.h>: native `long`s, so the layout is right on 64-bit (Pi OS arm64,
    # Jetson, x86_64) and on 32-bit armhf alike; the trailing padding is the kernel's.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockSync:
    """The kernel's view of the wall clock at one moment."""

    synchronized: bool | None  # None: could not be read (not Linux, no libc): say so, never guess
    max_error_s: float | None
    source: str  # "adjtimex", "override" or "unavailable"


_libc: ctypes.CDLL | None = None


def _adjtimex() -> _Timex | None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()  # modes = 0: read only
        if _libc.adjtimex(ctypes.byref(tx)) < 0:
            return None
        return tx
    except (OSError, AttributeError):
        return None


def read() -> ClockSync:
    """The synchronisation state now (a syscall, microseconds: cheap enough per clip)."""
    override = os.environ.get(OVERRIDE_ENV, "").strip().lower()
    if override in ("1", "true", "yes"):
        return ClockSync(True, None, "override")
    if override in ("0", "false", "no"):
        return ClockSync(False, None, "override")
    tx = _adjtimex()
    if tx is None:
        return ClockSync(None, None, "unavailable")
    return ClockSync(tx.maxerror < _UNSYNCED_MAXERROR_US, tx.maxerror / 1e6, "adjtimex")


def synchronized() -> bool | None:
    """True when NTP (or another discipline the kernel knows) has set the clock; None when unknown."""
    return read().synchronized
