"""What the stages share: the stage contract, the end-of-stream marker, the frame hand-off and the
record of a stage that died.

A stage owns one thread and one job. It is built with its inputs and outputs (queues, the ring, a
sink), started and stopped by the wiring, and tells how it is doing through a small typed status
(the way picamera2's encoders and outputs do): the daemon's STATUS line, `/healthz`, the replay
summary and `check` read those, never each other's counters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent import const
from edge_agent.metrics import Metrics

log = logging.getLogger("edge_agent.pipeline")

END: Any = object()  # end-of-stream marker passed down the queues


class Stage(Protocol):
    """What every stage is: a name, a thread body (`run`, until its input ends or it is stopped) and a
    typed status readable from any thread."""

    name: str

    def run(self) -> None: ...

    def status(self) -> Any: ...


@dataclass(frozen=True)
class Failure:
    """A stage that died: the process must end with `exit_code` (after open clips are spooled)."""

    stage: str
    reason: str
    exit_code: int = const.EXIT_SOFTWARE


class FailureBox:
    """Where a stage records why it died; the first failure wins and wakes whoever waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failure: Failure | None = None
        self.event = threading.Event()

    def set(self, failure: Failure) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = failure
        self.event.set()


class StageThread:
    """A stage's thread: runs `stage.run`, then `then` (which passes END on) whatever happens; an
    exception escaping the stage is logged once and recorded as its failure."""

    def __init__(self, stage: Stage, then: Callable[[], None] | None, failures: FailureBox):
        self.name = stage.name
        self._stage = stage
        self._then = then
        self._failures = failures
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def _run(self) -> None:
        try:
            self._stage.run()
        except Exception as exc:
            log.exception("%s stage failed", self.name)
            self._failures.set(Failure(self.name, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._then is not None:
                self._then()

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class FrameSlot:
    """Hand-off from decode to detect. Live: holds only the newest frame (older ones are counted as
    skipped, the detector never works on stale video). Fast replay: a short blocking queue, so every
    frame the rate asks for is analysed."""

    def __init__(self, blocking: bool, metrics: Metrics):
        self.blocking = blocking
        self._metrics = metrics
        self._cond = threading.Condition()
        self._items: list[Any] = []

    def put(self, item: Any) -> None:
        with self._cond:
            if self.blocking:
                while len(self._items) >= 2:
                    self._cond.wait()
            elif item is not END:
                stale = [x for x in self._items if x is not END]
                if stale:
                    self._metrics.inc("edge_agent_frames_skipped_total", len(stale))
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
