"""The moments a kill or a power cut is aimed at in a running agent's spool, seen from outside the agent
(inotify on its folders, its log), never through a delay inside it.

- clip write: while `tmp/<id>.mp4.part` is being written;
- queue insert: the queue's first WAL write once no clip waits (a new read's commit, not a delivered
  clip's delete);
- delete: between a delivered clip's sidecar unlink and its video's;
- detection: just after a `detected cid=` line.

and what the agent says its spool holds, to know when it has drained.

watchdog's observer batches and delays events (it pairs moves); a kill aimed at one write needs the event
as the kernel gives it, so inotify's three libc calls are used directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import select
import struct
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

IN_MODIFY, IN_CREATE, IN_DELETE = 0x2, 0x100, 0x200
_EVENT = struct.Struct("iIII")  # struct inotify_event without its name


class Inotify:
    def __init__(self, watches: dict[Path, int]):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._dirs: dict[int, Path] = {}
        for path, mask in watches.items():
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
            self._dirs[wd] = path

    def wait(self, match: Callable[[Path, str, int], bool], timeout: float,
             give_up: Callable[[], bool] = lambda: False) -> bool:
        """Block until an event (folder, name, mask) matches; False after `timeout` or once `give_up()`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not give_up():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            buf = os.read(self.fd, 65536)
            at = 0
            while at < len(buf):
                wd, mask, _cookie, n = _EVENT.unpack_from(buf, at)
                name = buf[at + _EVENT.size:at + _EVENT.size + n].rstrip(b"\0").decode(errors="replace")
                at += _EVENT.size + n
                if wd in self._dirs and match(self._dirs[wd], name, mask):
                    return True
        return False

    def discard(self) -> None:
        """Forget the events the kernel has queued so far."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def clip_write(spool: Path, rng: random.Random, timeout: float, give_up: Callable[[], bool]) -> bool:
    """Returns during a clip's write: after one of its first few writes (a clip takes several)."""
    writes = rng.randint(1, 4)

    def match(_folder: Path, name: str, mask: int) -> bool:
        nonlocal writes
        if name.endswith(".mp4.part") and mask & IN_MODIFY:
            writes -= 1
        return writes <= 0

    with Inotify({spool / "tmp": IN_MODIFY}) as watch:
        return watch.wait(match, timeout, give_up)


def queue_insert(spool: Path, timeout: float, give_up: Callable[[], bool]) -> bool:
    """Returns at the queue's first WAL write once no clip waits in clips/."""
    deadline = time.monotonic() + timeout
    with Inotify({spool: IN_MODIFY}) as watch:
        while any((spool / "clips").glob("*.json")) and time.monotonic() < deadline and not give_up():
            time.sleep(0.01)
        watch.discard()  # the backlog's own writes: only a write from now on counts
        return watch.wait(lambda _f, name, _m: name == "queue.sqlite3-wal", max(0.0, deadline - time.monotonic()),
                          give_up)


def delete_after_delivery(spool: Path, timeout: float, give_up: Callable[[], bool]) -> bool:
    """Returns just after a delivered clip's sidecar is unlinked, before its video is."""
    with Inotify({spool / "clips": IN_DELETE}) as watch:
        return watch.wait(lambda _f, name, _m: name.endswith(".json"), timeout, give_up)


def spool_clips(port: int) -> float | None:
    """What the running agent says its spool holds (edge_agent_spool_clips on /metrics); None while it
    cannot say."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return next((float(line.split()[1]) for line in text.splitlines() if line.startswith("edge_agent_spool_clips ")),
                None)


def log_line(log: Path, text: str, timeout: float, give_up: Callable[[], bool]) -> bool:
    """Returns once a new line containing `text` is in `log` (only lines written after the call count)."""
    start = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not give_up():
        with log.open("rb") as f:
            f.seek(start)
            if text.encode() in f.read():
                return True
        time.sleep(0.003)
    return False
