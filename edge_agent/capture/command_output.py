"""A camera command's stderr in the agent's log, through the same formatter as every other line.

A command left to write to the agent's stderr would reach the journal unmasked (ffmpeg names the URL it
cannot open, password and all) and unbounded (ffmpeg's progress line, rpicam-vid's frame counter).
Each line here is logged under the command's name, so `redact` masks it and journald sees one entry
per line; at most `BURST` lines a `WINDOW_S` window are shown and the rest counted in one line.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from typing import BinaryIO

log = logging.getLogger("edge_agent.capture.command")

BURST = 20  # lines shown per window: a failing command's reason, never its progress meter
WINDOW_S = 10.0
LINE_MAX = 500  # characters kept of one line (a progress meter rewritten with \r has no newline)


class CommandOutput:
    """Reads a command's stderr pipe on a thread of its own until the command closes it (so the command
    never blocks on a full pipe), logging each line; keeps the last lines to name why it ended."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.name = name
        self._tail: deque[str] = deque(maxlen=3)
        self._thread = threading.Thread(target=self._forward, args=(stream,), name="command-stderr", daemon=True)
        self._thread.start()

    def last_words(self, wait_s: float = 0.5) -> str | None:
        """The command's last line, once it closed its stderr (waiting up to `wait_s` for that)."""
        self._thread.join(wait_s)
        return self._tail[-1] if self._tail else None

    def _forward(self, stream: BinaryIO) -> None:
        window_start = time.monotonic()
        shown = held = 0
        try:
            # Popen's pipes are unbuffered: buffer here, or every readline is a read() per byte
            with io.BufferedReader(stream) as lines:  # type: ignore[arg-type]
                for raw in iter(lambda: lines.readline(4 * LINE_MAX), b""):
                    for part in raw.replace(b"\r", b"\n").split(b"\n"):
                        text = part.decode("utf-8", "replace").strip()[:LINE_MAX]
                        if not text:
                            continue
                        self._tail.append(text)
                        now = time.monotonic()
                        if now - window_start >= WINDOW_S:
                            self._say_held(held)
                            window_start, shown, held = now, 0, 0
                        if shown < BURST:
                            shown += 1
                            log.info("%s: %s", self.name, text)
                        else:
                            held += 1
        except (OSError, ValueError):  # the pipe went away under us: the command is gone, nothing to say
            pass
        self._say_held(held)

    def _say_held(self, held: int) -> None:
        if held:
            log.info("%s: %d more line(s) of its output not shown", self.name, held)
