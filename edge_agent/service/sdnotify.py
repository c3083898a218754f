"""sd_notify(3) without a dependency: one datagram per state change to $NOTIFY_SOCKET.

READY=1 once frames flow (or the camera is found away and is being retried), EXTEND_TIMEOUT_USEC= while a
long spool recovery holds the start, STATUS= for `systemctl status`, WATCHDOG=1 while the agent is not hung (the
daemon decides: a camera that is away is not a hang, a stuck capture thread is; WatchdogSec= restarts it),
RELOADING=1 and STOPPING=1.
Outside systemd there is no socket and every call does nothing. Notification is a courtesy to the
supervisor, never a reason to fail: a send error is logged once (debug) and reported as False.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

# A blocked supervisor must not stall the caller's loop for long, but READY=1 should not be lost
# to a momentarily full socket buffer either: wait this long, then drop the message.
SEND_TIMEOUT_S = 0.5


def _address(value: str) -> str | bytes | None:
    """`/run/systemd/notify` (a path) or `@name` (Linux abstract namespace: a leading NUL byte).
    Anything else (a relative path, systemd 254's `vsock:`) is not something we speak."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Talks to systemd (or any listener on $NOTIFY_SOCKET); thread-safe, never raises.

    `env` defaults to the process environment; tests pass their own mapping.
    """

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET") or ""
        self._addr = _address(raw) if raw else None
        if raw and self._addr is None:
            log.debug("sd_notify disabled: unsupported NOTIFY_SOCKET=%r", raw)
        self._watchdog_usec = _watchdog_usec(env)
        self._logged = False

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def watchdog_interval_s(self) -> float | None:
        """WatchdogSec= as systemd set it (WATCHDOG_USEC), or None when no watchdog is meant for
        this process. Send WATCHDOG=1 at least twice per interval: see `ping_interval_s()`."""
        return self._watchdog_usec / 1e6 if self._watchdog_usec else None

    def ping_interval_s(self) -> float | None:
        """Half the watchdog interval, as sd_watchdog_enabled(3) recommends; None without a watchdog."""
        interval = self.watchdog_interval_s()
        return interval / 2 if interval else None

    def notify(self, **fields: str | int | float) -> bool:
        """Send `KEY=value` lines in one datagram; True if it was sent. A newline in a value would
        forge another field, so it becomes a space."""
        if self._addr is None:
            return False
        try:
            msg = "\n".join(f"{k}={_one_line(v)}" for k, v in fields.items()).encode("utf-8", "replace")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(SEND_TIMEOUT_S)
                s.sendto(msg, self._addr)
            return True
        except Exception as exc:  # a supervisor problem must never stop the service
            if not self._logged:
                self._logged = True
                log.debug("sd_notify failed socket=%r error=%s (further failures not logged)", self._addr, exc)
            return False

    def ready(self) -> bool:
        return self.notify(READY=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        """RELOADING=1 with the CLOCK_MONOTONIC time, as sd_notify(3) asks (systemd >= 253 uses it to
        match the READY=1 that ends the reload). Send `ready()` when the reload is done."""
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def extend_timeout(self, seconds: float, status: str) -> bool:
        """The start (or stop) takes longer, for a reason `status` says: systemd waits `seconds` more from now
        rather than kill it at TimeoutStartSec= (systemd >= 236; older ones ignore it)."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1e6), STATUS=status)


def _one_line(value: object) -> str:
    return str(value).replace("\r", " ").replace("\n", " ")


def _watchdog_usec(env: Mapping[str, str]) -> int:
    """WATCHDOG_USEC, unless WATCHDOG_PID names another process (the watchdog is for our parent
    or a child then); malformed values mean no watchdog rather than a crash at start-up."""
    try:
        usec = int(env.get("WATCHDOG_USEC") or 0)
    except ValueError:
        return 0
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return 0
        except ValueError:
            return 0
    return max(usec, 0)
