"""Retry timing: full-jitter exponential backoff and the server's Retry-After.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads a fleet of devices
that lost the same server at the same moment, so they do not come back in lock-step. Delays are
relative seconds, scheduled on the monotonic clock by the caller: a wall-clock jump (NTP after a
power cut, a day of drift) changes neither order nor timing.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


class Backoff:
    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay after `attempt` failures (attempt >= 1)."""
        return min(self.cap_s, self.base_s * 2 ** min(max(attempt - 1, 0), 32))

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait: a full-jitter draw, but never less than what the server asked for
        (itself capped, so a hostile Retry-After cannot park the queue for a year)."""
        d = self._rng.uniform(0, self.ceiling(attempt))
        if retry_after_s is not None:
            d = max(d, min(retry_after_s, self.cap_s))
        return d


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP-date (RFC 9110 10.2.3); None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = datetime.now(timezone.utc).timestamp() if now_wall is None else now_wall
    return max(0.0, when.timestamp() - now)
