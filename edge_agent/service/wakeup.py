"""What wakes the daemon's main loop between its ticks: a signal (SIGTERM, SIGHUP) or a thread that has
something for it (a stage failed, a file source ended). Without it a SIGHUP or SIGTERM waits for the next
tick, up to a second.

A pipe, not an `Event`: a Python signal handler runs on the main thread between two bytecodes, possibly
while that thread holds the `Event`'s lock, so setting one from the handler can deadlock. The
interpreter's own wake-up fd (`signal.set_wakeup_fd`) writes to the pipe from the C-level handler, and a
`poll` on it returns once the Python handler has run (PEP 475 retries the interrupted call after it).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable


class Wakeup:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)  # a full pipe already means "wake up": never block a writer
        self._lock = threading.Lock()  # a poking thread never writes to a closed (maybe reused) fd
        self._closed = False
        self._old_fd: int | None = None

    def on_signals(self) -> None:
        """Wake on every signal that has a Python handler (call from the main thread)."""
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def after(self, name: str, wait: Callable[[], object]) -> None:
        """Wake once `wait()` returns, from a daemon thread (for events the main loop does not wait on)."""
        def run() -> None:
            wait()
            self.poke()

        threading.Thread(target=run, name=f"wake-{name}", daemon=True).start()

    def poke(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                os.write(self._w, b"\0")

    def wait(self, timeout: float) -> None:
        """Until woken or `timeout` seconds, whichever is first; wake-ups that came meanwhile count."""
        poller = select.poll()  # not select(): a busy daemon may hold fds past FD_SETSIZE
        poller.register(self._r, select.POLLIN)
        if poller.poll(max(0, int(timeout * 1000))):
            try:
                while os.read(self._r, 512):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
            self._old_fd = None
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._r)
                os.close(self._w)
