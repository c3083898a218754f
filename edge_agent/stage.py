"""The stage contract, kept by every stage thread: capture's and the pipeline's.

A stage owns one thread and one job. It is built with its inputs and outputs (queues, the ring, a
sink), started and stopped by the wiring, and tells how it is doing through a small typed status
(the way picamera2's encoders and outputs do): the daemon's STATUS line, `/healthz`, the replay
summary and `check` read those, never each other's counters. A stage that dies records why in the
`FailureBox` the wiring gives it; the process then ends with the failure's exit code.

It sits below `capture` and `pipeline` (docs/architecture.md section 2) because both keep it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from edge_agent import const
from edge_agent.thread_names import name_os_thread

log = logging.getLogger("edge_agent.pipeline")


class Stage(Protocol):
    """What every stage is: a name, a thread body (`run`, until its input ends or it is stopped) and a
    typed status readable from any thread."""

    name: str

    def run(self) -> None: ...

    def status(self) -> Any: ...


class Backpressure(Enum):
    """What a hand-off between stages does when its reader is behind. One setting for the whole pipeline,
    decided by the wiring from the source (`pipeline.wiring.backpressure_for`) and handed to every part
    that has a bound, so they cannot disagree.

    BLOCK: a recorded file read as fast as it decodes. The writer waits for room: nothing is dropped, so a
    replay is deterministic and finds every label.
    DROP: a camera (or a file played at its recorded pace, as a camera would give it). Frames come whether
    or not anyone is ready: the writer never waits, and what does not fit is dropped and counted.
    """

    BLOCK = "block"
    DROP = "drop"


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
        name_os_thread(self.name)
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
