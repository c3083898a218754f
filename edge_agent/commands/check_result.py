"""One line of `edge-agent check`: shared by the checks and the table that prints them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, SKIP, WARN = "PASS", "FAIL", "SKIP", "WARN"  # WARN: works, but worse than it could


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP | WARN
    detail: str
    hint: str = ""
    data: dict[str, Any] = field(default_factory=dict)
