"""What the device's web server allows a client: how often its misbehaviour is logged, and how fast
it may guess the password.

- `LineLimiter`: at most one log line per kind per interval, the next one saying how many were left
  out, so a client that resets thousands of connections (or a scanner sending garbage) costs a few
  lines, and journald's own rate limit never swallows a real error along with them.
- `LoginBackoff`: per client address, a few wrong passwords are free (typos); after that each next
  try must wait twice as long as the last (capped), and a try made before its time is refused
  unseen (429 with Retry-After) without the password being checked, so waiting is the only way to
  guess. The table is bounded: the oldest entries go first.
  Beside it, one budget for every address together: a guesser with many addresses (a network of its
  own, 60 loopback aliases: 600 guesses in a second, each address within its free ten) spends it
  after `GLOBAL_FREE_FAILURES`, and from then on every address waits the same doubling wait, the
  right password included (an answer that differed would tell the guesser it had found it). Clients
  that logged in lately (the technician's open page, a Prometheus scraper with the password) are not
  held by it, only by their own back-off: a guesser cannot lock them out.
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
# wrong passwords from every address together before all but known clients wait: three technicians
# mistyping ten times each in a quarter of an hour
GLOBAL_FREE_FAILURES = 30


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


@dataclass(frozen=True)
class Held:
    """A client that must wait before its password is checked: how long, and whether it is the budget
    of every address together (`everyone`) rather than its own back-off that holds it."""

    seconds: int
    everyone: bool


class LoginBackoff:
    """Failed logins per client (by `client_key`) and of every client together, and how long each
    must wait before its next try."""

    def __init__(self, free: int = FREE_FAILURES, start_s: float = BACKOFF_START_S, cap_s: float = BACKOFF_CAP_S,
                 forget_s: float = FORGET_S, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic, global_free: int = GLOBAL_FREE_FAILURES):
        self.free, self.start_s, self.cap_s = free, start_s, cap_s
        self.forget_s, self.max_clients, self.global_free = forget_s, max_clients, global_free
        self._clock = clock  # seconds, monotonic; a test passes its own to step through waits of minutes
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._everyone = _Client()  # every address's failures, counted as one client's
        self._known: OrderedDict[str, float] = OrderedDict()  # client -> when it last logged in

    def held(self, host: str) -> Held | None:
        """How long `host` must still wait before its password is checked again; None: check it now."""
        now = self._clock()
        key = client_key(host)
        with self._lock:
            c = self._clients.get(key)
            if c is not None and now - c.last_failure > self.forget_s:
                del self._clients[key]  # quiet for long enough: it starts afresh
            own = self._remaining(c, now)
            known = self._known.get(key)
            shared = 0 if known is not None and now - known <= self.forget_s else self._remaining(self._everyone, now)
        if not own and not shared:
            return None
        return Held(max(own, shared), shared > own)

    def _remaining(self, c: _Client | None, now: float) -> int:
        if c is None or now - c.last_failure > self.forget_s:
            return 0
        return math.ceil(c.next_try - now) if c.next_try > now else 0

    def failed(self, host: str) -> tuple[int, float]:
        """Count a wrong password; returns (failures so far, seconds until the next try is checked)."""
        now = self._clock()
        key = client_key(host)
        with self._lock:
            c = self._count(self._clients.pop(key, None), now, self.free)
            self._clients[key] = c  # the most recent at the end: eviction takes the stalest first
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            self._everyone = self._count(self._everyone, now, self.global_free)
            return c.failures, c.next_try - now

    def _count(self, c: _Client | None, now: float, free: int) -> _Client:
        if c is None or now - c.last_failure > self.forget_s:
            c = _Client()
        c.failures += 1
        c.last_failure = now
        over = c.failures - free
        c.next_try = now + (0.0 if over < 0 else min(self.start_s * 2.0 ** over, self.cap_s))
        return c

    def everyone(self) -> tuple[int, float]:
        """Every address's failures together (since the last quiet `forget_s`), and the seconds all but
        known clients still wait; (0, 0.0) when nothing counts against them."""
        now = self._clock()
        with self._lock:
            c = self._everyone
            if now - c.last_failure > self.forget_s:
                return 0, 0.0
            return c.failures, max(0.0, c.next_try - now)

    def succeeded(self, host: str) -> None:
        """The right password: its own back-off is forgotten, and the budget of every address no longer
        holds it (it has the password; holding it would let a guesser lock it out)."""
        key = client_key(host)
        with self._lock:
            self._clients.pop(key, None)
            self._known.pop(key, None)
            self._known[key] = self._clock()
            while len(self._known) > self.max_clients:
                self._known.popitem(last=False)

    def clients(self) -> int:
        with self._lock:
            return len(self._clients)
