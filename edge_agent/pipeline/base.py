"""What the pipeline's stages hand each other: the end-of-stream marker and the decode -> detect
frame hand-off. The stage contract itself (StageThread, Failure) is `edge_agent.stage`, kept by the
capture stage too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

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

    def put(self, item: Any) -> None:
        with self._cond:
            if self._backpressure() is Backpressure.BLOCK:
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
