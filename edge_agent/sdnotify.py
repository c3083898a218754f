"""sd_notify(3) without a dependency: one datagram per state change to $NOTIFY_SOCKET.

READY=1 once frames flow, STATUS= for `systemctl status`, WATCHDOG=1 only while frames advance
(so a hung camera gets the service restarted by WatchdogSec=), RELOADING=1 and STOPPING=1. Outside
systemd there is no socket and every call does nothing; a failing send never disturbs the caller.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        addr = env.get("NOTIFY_SOCKET") or None
        self._addr: str | bytes | None = None
        if addr:
            # '@name' is Linux's abstract namespace: a leading NUL byte
            self._addr = b"\0" + addr[1:].encode() if addr.startswith("@") else addr
        self._watchdog_usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        pid = env.get("WATCHDOG_PID")
        if pid and pid.isdigit() and int(pid) != os.getpid():
            self._watchdog_usec = 0  # the watchdog is meant for another process
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def watchdog_interval_s(self) -> float | None:
        """The watchdog period systemd expects (WatchdogSec=); ping at half of it."""
        return self._watchdog_usec / 1e6 if self._watchdog_usec else None

    def notify(self, **fields: str | int) -> bool:
        if self._addr is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                # never block the service on its supervisor: a full socket buffer drops the message
                s.setblocking(False)
                s.sendto(msg, self._addr)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self._addr, exc)
                self._warned = True
            return False

    def ready(self) -> bool:
        return self.notify(READY=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        return self.notify(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1e6))

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)
