"""What wakes the daemon's main loop between its ticks: a signal (SIGTERM, SIGHUP) or a thread that has
something for it (a stage failed, a file source ended). Without it a SIGHUP or SIGTERM waits for the next
tick, up to a second.

A pipe, not an `Event`: a Python signal handler runs on the main thread between two bytecodes, possibly
while that thread holds the `Event`'s lock, so setting one from the handler can deadlock. The
interpreter's own wake-up fd (`signal.set_wakeup_fd`) writes to the pipe from the C-level handler, and a
`poll` on it returns once the Python handler has run (PEP 475 retries the interrupted call after it).
"""

from __future__ import annotations

import select
import signal
import threading
from collections.abc import Callable

from edge_agent.wake_pipe import WakePipe


class Wakeup:
    def __init__(self) -> None:
        self._pipe = WakePipe()
        self._old_fd: int | None = None

    def on_signals(self) -> None:
        """Wake on every signal that has a Python handler (call from the main thread)."""
        self._old_fd = signal.set_wakeup_fd(self._pipe.write_fd, warn_on_full_buffer=False)

    def after(self, name: str, wait: Callable[[], object]) -> None:
        """Wake once `wait()` returns, from a daemon thread (for events the main loop does not wait on)."""
        def run() -> None:
            wait()
            self.poke()

        threading.Thread(target=run, name=f"wake-{name}", daemon=True).start()

    def poke(self) -> None:
        self._pipe.poke()

    def wait(self, timeout: float) -> None:
        """Until woken or `timeout` seconds, whichever is first; wake-ups that came meanwhile count."""
        poller = select.poll()  # not select(): a busy daemon may hold fds past FD_SETSIZE
        poller.register(self._pipe.read_fd, select.POLLIN)
        if poller.poll(max(0, int(timeout * 1000))):
            self._pipe.drain()

    def close(self) -> None:
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
            self._old_fd = None
        self._pipe.close()
