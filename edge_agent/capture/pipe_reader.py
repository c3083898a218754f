"""A camera command's stdout as FFmpeg reads it: no read waits for ever, and any thread can end one at once.

PyAV reads a file object through its `read(n)`, called on the thread that opens or demuxes. A plain pipe
read blocks in the kernel until the command writes, and FFmpeg's interrupt callback (PyAV's `timeout=`) is
never consulted there: a camera that goes silent while FFmpeg probes it (its `probesize`/`analyzeduration`
phase), or while the frame rate is measured, holds the capture thread for as long as the command lives.

Here each read waits with `poll` on the pipe and on a wake-up pipe of its own, for at most `silence_s`
(source.open_timeout_s). Silence or `interrupt()` (a stall, a stop, a reload) ends the stream as an EOF
does: FFmpeg then hands over what it still holds (the H.264 parser's last frame), and `ended` says why.
`last_data` is when bytes last came: the arrival of whatever FFmpeg hands over next, so a frame drained at
the end keeps the time it came in, not the time the stream was found to be over.
"""

from __future__ import annotations

import os
import select
import time
from typing import Literal

from edge_agent.wake_pipe import WakePipe

Ended = Literal["eof", "silent", "interrupted"]


class PipeReader:
    """Read by one thread (FFmpeg's, through PyAV); `interrupt` from any thread."""

    def __init__(self, fd: int, silence_s: float):
        self._fd = fd
        self.silence_s = silence_s
        self._wake = WakePipe()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._poll.register(self._wake.read_fd, select.POLLIN)
        self.last_data = time.monotonic()  # when bytes last came (monotonic clock)
        self.ended: Ended | None = None

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; b"" (the end of the stream) once the command ended, was silent for `silence_s`,
        or `interrupt()` was called. Once ended, every later read ends at once."""
        if self.ended is not None:
            return b""
        try:
            ready = dict(self._poll.poll(max(1, round(self.silence_s * 1000))))
        except InterruptedError:  # PEP 475 retries; a signal handler that raised lands here
            ready = {}
        if self._wake.read_fd in ready:
            self.ended = "interrupted"
            return b""
        if not ready:
            self.ended = "silent"
            return b""
        try:
            data = os.read(self._fd, n)
        except OSError:  # the command's end of the pipe went away mid-read: the stream is over
            data = b""
        if not data:
            self.ended = "eof"
            return b""
        self.last_data = time.monotonic()
        return data

    def interrupt(self) -> None:
        """From any thread: the read waiting now, and every one after it, ends at once."""
        self._wake.poke()

    def close(self) -> None:
        """The reading thread, once FFmpeg is done with it (the command's stdout is closed by its owner)."""
        self.ended = self.ended or "interrupted"
        self._wake.close()
