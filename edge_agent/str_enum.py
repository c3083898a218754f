"""`StrEnum` on every Python the package supports: the standard library's from 3.11, the same behaviour
on 3.10 (Ubuntu 22.04, the base of JetPack 6), where enum has none. A member is a str whose `str()` and
`format()` are its value, so it is a metric label or a word in a log line as it stands."""

from __future__ import annotations

import enum
import sys


class StrEnum310(str, enum.Enum):
    """enum.StrEnum of Python 3.11, for 3.10 (kept importable everywhere so tests hold it to 3.11's)."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


if sys.version_info >= (3, 11):
    from enum import StrEnum  # novermin: guarded by the version check above
else:
    StrEnum = StrEnum310

__all__ = ["StrEnum"]
