"""What the pipeline's stages hand each other: the end-of-stream marker, the decode -> detect frame
hand-off (`FrameSlot`), and the ring -> clip hand-off of finished recordings (`Finished` through a
`RecordingQueue`). The stage contract itself (StageThread, Failure) is `edge_agent.stage`, kept by the
capture stage too.

A hand-off is the one place two stages meet: the stage that gives puts, the one that takes gets, and
neither calls into the other. What goes through is frozen: once handed over, nothing of it is shared.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent import const
from edge_agent.capture.media import Packet
from edge_agent.metrics import Metrics
from edge_agent.stage import Backpressure

END: Any = object()  # end-of-stream marker passed down the queues


class FrameSlot:
    """Hand-off from decode to detect. DROP (a camera): holds only the newest frame (older ones are
    counted as skipped, the detector never works on stale video). BLOCK (fast replay): a short blocking
    queue, so every frame the rate asks for is analysed."""

    def __init__(self, backpressure: Callable[[], Backpressure], metrics: Metrics):
        self._backpressure = backpressure
        self._metrics = metrics
        self._cond = threading.Condition()
        self._items: list[Any] = []
        self._closed = False  # the taker has ended: a put never waits for it again

    def close(self) -> None:
        """The taker's thread has ended (done, or died): what waits to put returns, and later puts do not wait."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def put(self, item: Any) -> None:
        with self._cond:
            if self._backpressure() is Backpressure.BLOCK:
                while len(self._items) >= 2 and not self._closed:
                    self._cond.wait()
            elif item is not END:
                stale = [x for x in self._items if x is not END]
                if stale:
                    self._metrics.frames_skipped.inc(len(stale))
                self._items = [x for x in self._items if x is END]
            self._items.append(item)
            self._cond.notify_all()

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.pop(0)
            self._cond.notify_all()
            return item


@dataclass(frozen=True)
class Finished:
    """A finished recording, as the ring hands it to the clip stage: the packets of one clip, in decode
    order, from a keyframe at or before `start_t` to the last one shown before `end_t`."""

    key: str  # the read's event id
    start_t: float
    end_t: float
    packets: tuple[Packet, ...]
    truncated_start: str | None = None  # why it starts after start_t: "start_of_video", "ring"
    truncated_end: str | None = None  # why it ends before end_t: "shutdown", "source_restart", "end_of_video"
    # handed over by a flush (stop, source restart) with every other open recording at once: its packets are
    # held already (shared with the ring), so the clip stage's backlog bound does not drop it
    flushed: bool = False
    dropped: str | None = None  # why its video was let go before a clip was made (the hand-off's bound)

    @property
    def size_bytes(self) -> int:
        return sum(p.size for p in self.packets)

    @property
    def truncated(self) -> str | None:
        """What cut the clip short, for its metadata; None when it shows all it should."""
        return self.truncated_start or self.truncated_end


# the clip stage's own wake-up in its queue (a reloaded config to take): not a recording
WAKE: Any = object()


class RecordingQueue:
    """Hand-off from the ring to the clip stage, bounded in count and bytes (const.CLIP_BACKLOG_*). BLOCK
    (fast replay): `put` waits for room, so every clip is made. DROP (a camera): `put` never waits; past the
    bound a recording goes on without its video (`Finished.dropped` says why), so its read still goes out.
    Recordings handed over by a flush are never dropped: their packets are held already."""

    def __init__(self, backpressure: Callable[[], Backpressure], metrics: Metrics):
        self._backpressure = backpressure
        self._metrics = metrics
        self._cond = threading.Condition()
        self._items: deque[Any] = deque()
        self._bytes = 0  # of the recordings put and not yet done
        self._count = 0
        self.dropped = 0
        self._closed = False  # the clip stage has ended: a put never waits for it again

    def put(self, rec: Finished) -> None:
        """Any thread the ring hands over on (capture, detect)."""
        size = rec.size_bytes
        with self._cond:
            if self._backpressure() is Backpressure.BLOCK:
                while self._count and self._full(size) and not self._closed:
                    self._cond.wait(0.5)
            elif self._full(size) and not rec.flushed:
                rec = dataclasses.replace(rec, packets=(), dropped=(
                    "clip worker behind (encoding or disk too slow for the label rate): video dropped"))
                size = 0
                self.dropped += 1
                self._metrics.clips_dropped.inc()
            self._bytes += size
            self._count += 1
            self._items.append(rec)
            self._cond.notify_all()

    def wake(self) -> None:
        """The clip stage has something to take besides recordings (a reloaded config)."""
        with self._cond:
            self._items.append(WAKE)
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._items.append(END)
            self._cond.notify_all()

    def close(self) -> None:
        """The clip stage's thread has ended (done, or died): what waits to put returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self) -> Any:
        """The clip stage's thread: the next recording, WAKE or END."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.popleft()

    def done(self, rec: Finished) -> None:
        """The clip stage made (or gave up) `rec`: its room is free."""
        with self._cond:
            self._bytes = max(0, self._bytes - rec.size_bytes)
            self._count = max(0, self._count - 1)
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Recordings put and not yet done (the one being made included)."""
        with self._cond:
            return self._count

    def _full(self, size: int) -> bool:
        return self._bytes + size > const.CLIP_BACKLOG_BYTES or self._count >= const.CLIP_BACKLOG_COUNT
