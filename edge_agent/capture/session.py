"""What every source kind's session is and gives (`Session`), how one ends (`SessionEnd`), and its errors.

The kinds (`source.AvSource` for what FFmpeg opens, `picamera2_source.Picamera2Source` for a Pi CSI camera)
each keep this contract; the capture stage knows sessions through it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.capture.media import Packet, StreamInfo
from edge_agent.config import SourceConfig
from edge_agent.redact import redact


class SourceError(Exception):
    """The source cannot be opened or read; the message says what a technician can check. It is
    shown on pages and in logs, and FFmpeg's errors quote the URL: the login is masked here."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class SourceSilent(SourceError):
    """The source sent nothing for as long as it may (source.open_timeout_s, or source.stall_s for a
    network read): a camera that does not answer, not a stream FFmpeg cannot read."""



@dataclass(frozen=True)
class SessionEnd:
    """How a session ended, as `read` returns it."""

    end_t: float  # one frame after its last packet: where the next session's capture clock starts
    delivered: int  # packets and pictures handed on
    error: SourceError | None  # the read failed (the session ended early); None: the source ended or was stopped


def read_session(items: Iterator[Any], start_t: float, frame_s: float,
                 deliver: Callable[[Any], bool]) -> SessionEnd:
    """Hand each item to `deliver` until it returns False or the items end; the end time follows the
    packets (a camera's pictures are of the same frames)."""
    last_t = start_t - frame_s
    n = 0
    error: SourceError | None = None
    try:
        for item in items:
            n += 1
            if isinstance(item, Packet) and item.t > last_t:
                last_t = item.t
            if not deliver(item):
                break
    except SourceError as exc:
        error = exc
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # now, on this thread: a generator left open would be finished whenever it is collected
    return SessionEnd(last_t + frame_s, n, error)


class Session(Protocol):
    """What every source kind's session is (`AvSource`, `Picamera2Source`): opened once, read until it
    ends, fails or is interrupted, closed by the thread that read it."""

    cfg: SourceConfig
    path: str | None
    info: StreamInfo | None
    fps_from: str | None
    camera: bool  # runs at its own pace and is reopened when it ends; a recorded file does not
    gives_pictures: bool  # also gives the detector's pictures itself (nothing to decode)

    @property
    def describe(self) -> str: ...

    def open(self, start_t: float = 0.0) -> StreamInfo: ...

    def packets(self) -> Iterator[Any]: ...

    def read(self, deliver: Callable[[Any], bool]) -> SessionEnd: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...
