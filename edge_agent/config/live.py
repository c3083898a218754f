"""How a changed config reaches the parts that run on it.

The schema marks every key `live` or `restart` (schema.py); `reload_marks` reads those marks and is
the only place that does. A part that takes live keys says which ones (dotted prefixes such as
`detector` or `clip.pre_roll_s`) when it registers with the composition root (`app.Agent.take_live`),
and gets `apply(new, changed)` with the keys of its share that changed. A part with a thread of its
own does not change under that thread's feet: its `apply` only offers the config to a
`PendingConfig`, and the thread takes it at its loop boundary (between two frames, two clips).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol

from pydantic import BaseModel

from edge_agent.config.schema import Config


class LivePart(Protocol):
    """A part that follows live config changes; `config` is the config it runs on now."""

    @property
    def config(self) -> Config: ...

    def apply(self, new: Config, changed: frozenset[str]) -> None: ...


def reload_marks(model: BaseModel, prefix: str = "") -> dict[str, tuple[Any, str]]:
    """Dotted key -> (value, 'live' | 'restart') for every key, from the schema's reload marks. A field
    that carries a mark is one key even when its value is a section (`detector.roi`, `source.picamera2`)."""
    out: dict[str, tuple[Any, str]] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if isinstance(value, BaseModel) and not extra:
            out.update(reload_marks(value, key + "."))
        else:
            out[key] = (value, str(extra.get("reload", "live")))
    return out


def live_keys() -> list[str]:
    """Every key the schema marks live."""
    return sorted(k for k, (_v, mark) in reload_marks(Config()).items() if mark == "live")


def classify_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Keys whose value changed: (live ones, restart-only ones)."""
    a, b = reload_marks(old), reload_marks(new)
    live, restart = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key, (None,))[0] != b.get(key, (None,))[0]:
            (restart if b.get(key, a.get(key))[1] == "restart" else live).append(key)
    return live, restart


def covers(prefixes: Iterable[str], key: str) -> bool:
    """Whether a part registered for `prefixes` uses `key` (`detector` covers `detector.roi`)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


class PendingConfig:
    """The hand-over between a reload (any thread) and a part's own thread: `offer` keeps the newest
    config and the union of the keys changed since the thread last looked; `take`, at the thread's loop
    boundary, returns them once. Nothing else of the part is touched by the reloading thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: Config | None = None
        self._changed: frozenset[str] = frozenset()

    def offer(self, new: Config, changed: frozenset[str]) -> None:
        with self._lock:
            self._new = new
            self._changed = self._changed | changed

    def peek(self) -> Config | None:
        """The config offered and not taken yet, left for `take`: for a reader beside the part's thread
        that must not wait for its next loop (the stall watch, while no frame comes)."""
        with self._lock:
            return self._new

    def take(self) -> tuple[Config, frozenset[str]] | None:
        # the usual answer, read without the lock (parts take per packet); an offer racing this read is
        # taken at the next call, and one made before a wake-up is seen (set under the lock before it)
        if self._new is None:
            return None
        with self._lock:
            if self._new is None:
                return None
            taken = (self._new, self._changed)
            self._new, self._changed = None, frozenset()
            return taken
