"""Stand-in for picamera2/job.py: a `Job` is a list of functions the camera's event loop runs, one per
trip round it until each says it is done, with a Future for the result.

As in picamera2: the Future is set running when the job is made (so `cancel_all_and_flush`, which sets
CancelledError on it, works on a job still queued); `get_result(timeout)` is `Future.result(timeout)`, so
a timeout raises `concurrent.futures.TimeoutError` (before Python 3.11 not the built-in TimeoutError).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

__all__ = ["CancelledError", "Job"]


class Job:
    def __init__(self, functions: list[Callable[[], tuple[bool, Any]]], signal_function=None):
        self._functions = list(functions)
        self._future: Future = Future()
        self._future.set_running_or_notify_cancel()
        self._signal_function = signal_function
        self._result: Any = None
        self.calls = 0

    def execute(self) -> bool:
        """Run the job's functions from the first unfinished one; True when the last is done (or one
        raised: the Future then holds the exception)."""
        assert self._functions, "Job already completed!"
        try:
            while self._functions:
                done, result = self._functions[0]()
                self.calls += 1
                if not done:
                    break
                self._functions.pop(0)
            if not self._functions:
                self._result = result
        except Exception as exc:
            self._future.set_exception(exc)
            self._functions = []
        return not self._functions

    def signal(self) -> None:
        assert not self._functions, "Job not finished!"
        if not self._future.done():
            self._future.set_result(self._result)
        if self._signal_function:
            self._signal_function(self)

    def get_result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout=timeout)

    def cancel(self) -> None:
        self._future.set_exception(CancelledError())
