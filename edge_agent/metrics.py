"""Process-wide counters and gauges.

One small registry, not a Prometheus client library: the agent exports a dozen
numbers, and a Pi does not need another dependency for that. Every stage counts
what it skips or drops here, so nothing is ever silent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Metrics:
    """Thread-safe named counters (monotonic) and gauges (set), with optional labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    @staticmethod
    def _key(name: str, labels: dict[str, str] | None) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted((labels or {}).items()))

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = self._key(name, labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._gauges[self._key(name, labels)] = value

    def get(self, name: str, **labels: str) -> float:
        key = self._key(name, labels)
        with self._lock:
            return self._counters.get(key, self._gauges.get(key, 0))

    def total(self, name: str) -> float:
        """Sum of a counter over all its label values."""
        with self._lock:
            return sum(v for (n, _), v in self._counters.items() if n == name)

    def labelled(self, name: str, label: str) -> dict[str, float]:
        """A counter's values by one label, e.g. drops by reason."""
        with self._lock:
            return {dict(lbl).get(label, ""): v for (n, lbl), v in self._counters.items() if n == name}

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            items: Iterable = list(self._counters.items()) + list(self._gauges.items())
        return {_render_name(n, lbl): v for (n, lbl), v in items}

    def prometheus_text(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        with self._lock:
            counters = sorted(self._counters.items())
            gauges = sorted(self._gauges.items())
        out: list[str] = []
        for kind, items in (("counter", counters), ("gauge", gauges)):
            seen: set[str] = set()
            for (name, labels), value in items:
                if name not in seen:
                    out.append(f"# TYPE {name} {kind}")
                    seen.add(name)
                out.append(f"{_render_name(name, labels)} {_value(value)}")
        return "\n".join(out) + "\n"


def _render_name(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}}"


def _value(v: float) -> str:
    """Exact integers (a frame counter passes a million in 9 hours at 30 fps; '{:g}' kept 6 digits)."""
    v = float(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
