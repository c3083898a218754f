"""Loaded by Python at start-up when this folder is on PYTHONPATH: shifts the process' wall clock by the
number of seconds in the file named by EDGE_AGENT_TEST_CLOCK_SHIFT_FILE, read again at most every 50 ms,
so a test steps the clock of a running agent by rewriting that file (atomically). The monotonic clock
is left alone, as NTP leaves it.

Debian's libfaketime preload would shift the clock for every program, but makes Python 3.11's
`time.sleep` fail with EINVAL; this shifts what the agent reads instead: `time.time`, `time.time_ns`,
`time.localtime`/`gmtime`/`ctime`/`strftime` without an explicit time, and `datetime.now`/`utcnow`/`today`
(the agent reads the wall clock through `time.time` and, for an HTTP-date Retry-After alone,
`datetime.now`; tests/test_clock_time.py checks each of these moves).
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import time as _time

_PATH = os.environ.get("EDGE_AGENT_TEST_CLOCK_SHIFT_FILE")

if _PATH:
    _real_time, _real_time_ns, _mono = _time.time, _time.time_ns, _time.monotonic
    _real_localtime, _real_gmtime, _real_ctime, _real_strftime = (_time.localtime, _time.gmtime, _time.ctime,
                                                                  _time.strftime)
    _state = {"shift": 0.0, "next": -1.0}

    def _shift() -> float:
        now = _mono()
        if now >= _state["next"]:
            _state["next"] = now + 0.05
            try:
                with open(_PATH, encoding="ascii") as f:
                    _state["shift"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass  # keep the last value
        return _state["shift"]

    def time() -> float:
        return _real_time() + _shift()

    def time_ns() -> int:
        return _real_time_ns() + int(_shift() * 1e9)

    def localtime(secs: float | None = None) -> _time.struct_time:
        return _real_localtime(time() if secs is None else secs)

    def gmtime(secs: float | None = None) -> _time.struct_time:
        return _real_gmtime(time() if secs is None else secs)

    def ctime(secs: float | None = None) -> str:
        return _real_ctime(time() if secs is None else secs)

    def strftime(fmt: str, t: _time.struct_time | None = None) -> str:
        return _real_strftime(fmt, localtime() if t is None else t)

    # partial objects, like the built-ins they replace, do not bind as methods (logging.Formatter keeps
    # time.localtime as a class attribute and calls it through self)
    _time.time, _time.time_ns = functools.partial(time), functools.partial(time_ns)
    _time.localtime, _time.gmtime = functools.partial(localtime), functools.partial(gmtime)
    _time.ctime, _time.strftime = functools.partial(ctime), functools.partial(strftime)

    class _ShiftedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> _ShiftedDatetime:
            return cls.fromtimestamp(time(), tz)

        @classmethod
        def utcnow(cls) -> _ShiftedDatetime:
            return cls.fromtimestamp(time(), _dt.timezone.utc).replace(tzinfo=None)

        @classmethod
        def today(cls) -> _ShiftedDatetime:
            return cls.fromtimestamp(time())

    _dt.datetime = _ShiftedDatetime  # type: ignore[misc]
