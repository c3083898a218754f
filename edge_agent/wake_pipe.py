"""A pipe any thread writes one byte to, to wake a thread that polls its read end: the daemon's main
loop (`service.wakeup`, signals included) and a camera command's reads (`capture.pipe_reader`).

Both ends are non-blocking: a full pipe already means "wake up", so a poke never blocks, and `drain`
empties it without waiting. A lock orders `poke` against `close`, so no thread writes to a closed fd that
the process may have reused for something else meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import threading


class WakePipe:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._lock = threading.Lock()
        self._closed = False

    def poke(self) -> None:
        """From any thread: wake the poller (once closed, nothing)."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                os.write(self.write_fd, b"\0")

    def drain(self) -> None:
        """The poller, once woken: wake-ups so far are consumed."""
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Both ends, once (later calls and pokes do nothing)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.read_fd)
                os.close(self.write_fd)
