"""What the device's web server allows a client: how often its misbehaviour is logged, and how fast
it may guess the password.

- `LineLimiter`: at most one log line per kind per interval, the next one saying how many were left
  out, so a client that resets thousands of connections (or a scanner sending garbage) costs a few
  lines, and journald's own rate limit never swallows a real error along with them.
- `LoginBackoff`: per client address, a few wrong passwords are free (typos); after that each next
  try must wait twice as long as the last (capped), and a try made before its time is refused
  unseen (429 with Retry-After) without the password being checked, so waiting is the only way to
  guess. Other clients are unaffected. The table is bounded: the oldest entries go first.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

LOG_INTERVAL_S = 10.0
FREE_FAILURES = 10
BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 60.0
# a client with no wrong password for this long starts afresh
FORGET_S = 900.0
MAX_CLIENTS = 4096


class LineLimiter:
    """`allow(kind)` is None when a line of that kind was logged less than `interval_s` ago (counted),
    else the number of lines left out since the last one (0 or more): log then, and say it."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock  # seconds, monotonic; a test passes its own to step through the interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._skipped.pop(kind, 0)


def suppressed(n: int) -> str:
    """The tail of a rate-limited line: ` (+12 more like it in the last 10 s)`, or nothing."""
    return f" (+{n} more like it since the last line)" if n else ""


def client_key(host: str) -> str:
    """The unit a back-off applies to: the IPv4 address, or the IPv6 /64 (one host picks freely among
    2**64 addresses of its own network, so a per-address count would not slow it)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr.ipv4_mapped or addr) if isinstance(addr, ipaddress.IPv6Address) else str(addr)


@dataclass
class _Client:
    failures: int = 0
    last_failure: float = 0.0
    next_try: float = 0.0


class LoginBackoff:
    """Failed logins per client (by `client_key`), and how long each must wait before its next try."""

    def __init__(self, free: int = FREE_FAILURES, start_s: float = BACKOFF_START_S, cap_s: float = BACKOFF_CAP_S,
                 forget_s: float = FORGET_S, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic):
        self.free, self.start_s, self.cap_s = free, start_s, cap_s
        self.forget_s, self.max_clients = forget_s, max_clients
        self._clock = clock  # seconds, monotonic; a test passes its own to step through waits of minutes
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def retry_after_s(self, host: str) -> int:
        """Whole seconds `host` must still wait before its password is checked again; 0: check it now."""
        now = self._clock()
        with self._lock:
            c = self._clients.get(client_key(host))
            if c is None:
                return 0
            if now - c.last_failure > self.forget_s:
                del self._clients[client_key(host)]
                return 0
            return math.ceil(c.next_try - now) if c.next_try > now else 0

    def failed(self, host: str) -> tuple[int, float]:
        """Count a wrong password; returns (failures so far, seconds until the next try is checked)."""
        now = self._clock()
        key = client_key(host)
        with self._lock:
            c = self._clients.pop(key, None)
            if c is None or now - c.last_failure > self.forget_s:
                c = _Client()
            c.failures += 1
            c.last_failure = now
            over = c.failures - self.free
            wait = 0.0 if over < 0 else min(self.start_s * 2.0 ** over, self.cap_s)
            c.next_try = now + wait
            self._clients[key] = c  # the most recent at the end: eviction takes the stalest first
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            return c.failures, wait

    def succeeded(self, host: str) -> None:
        with self._lock:
            self._clients.pop(client_key(host), None)

    def clients(self) -> int:
        with self._lock:
            return len(self._clients)
