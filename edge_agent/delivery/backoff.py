"""Retry timing: full-jitter exponential backoff and the server's Retry-After.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads a fleet of devices
that lost the same server at the same moment, so they do not come back in lock-step (the AWS
architecture blog's "Exponential Backoff And Jitter" measured it against equal and decorrelated
jitter). Delays are relative seconds that the caller schedules on the monotonic clock: a
wall-clock jump (NTP after a power cut, a Pi without a real-time clock) changes neither order
nor timing. Only an HTTP-date Retry-After needs the wall clock, because it *is* a wall time.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

# 2**32 * base already exceeds any cap; a bigger exponent only risks float overflow.
_MAX_EXPONENT = 32


class Backoff:
    """`delay(n)` after the n-th consecutive failure is uniform(0, min(cap, base * 2**(n-1)))."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay after `attempt` failures (attempt >= 1; 0 counts as 1)."""
        return min(self.cap_s, self.base_s * 2 ** min(max(attempt - 1, 0), _MAX_EXPONENT))

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait: a full-jitter draw, but never less than what the server asked for
        (itself capped at cap_s, so a hostile or mistaken Retry-After cannot park the queue for a year)."""
        d = self._rng.uniform(0, self.ceiling(attempt))
        if retry_after_s is not None:
            d = max(d, min(max(retry_after_s, 0.0), self.cap_s))
        return d


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP-date (RFC 9110 section 10.2.3), in seconds from now;
    None when absent or malformed (the caller then uses plain backoff). A date in the past gives 0."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = datetime.now(timezone.utc).timestamp() if now_wall is None else now_wall
    return max(0.0, when.timestamp() - now)
