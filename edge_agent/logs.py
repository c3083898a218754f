"""Logging set-up: one line per event, journald-aware.

Under systemd (JOURNAL_STREAM set) journald adds its own timestamps and reads a
`<N>` syslog priority prefix, so lines carry the prefix and no timestamp. On a
terminal or in a file they carry an ISO timestamp instead.
"""

from __future__ import annotations

import logging
import os
import sys

from edge_agent.redact import redact

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class OneLineFormatter(logging.Formatter):
    """One event, one line: a newline in a message (or a traceback) cannot forge a second entry; and
    no password: a URL's login or a command's secret is masked whatever logged it."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record).replace("\r", "").replace("\n", " | "))


class JournalFormatter(OneLineFormatter):
    """`<6>edge_agent.pipeline.wiring: clip ready cid=... clip=...` as journald expects on stderr."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{record.name}: {super().format(record)}"


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once; calling again only changes the level (live reload)."""
    root = logging.getLogger()
    if not any(getattr(h, "is_edge_agent_handler", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.is_edge_agent_handler = True  # type: ignore[attr-defined]
        if under_journald():
            handler.setFormatter(JournalFormatter("%(message)s"))
        else:
            handler.setFormatter(OneLineFormatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
