"""CID validation. A QR code is attacker-controlled bytes: nothing from it is used
until it has matched the configured pattern in full, and a rejected payload is
only ever logged escaped and truncated."""

from __future__ import annotations

import re

from edge_agent import const


class CidValidator:
    """Accepts a payload as a CID only if it is printable text that fully matches the pattern."""

    def __init__(self, pattern: str = const.CID_PATTERN, max_length: int = const.CID_MAX_LENGTH):
        self.pattern = re.compile(pattern)
        self.max_length = max_length

    def check(self, payload: str) -> str | None:
        """The CID if the payload is acceptable, else None.

        The length check comes first so a megabyte of junk never reaches the regex engine,
        and `fullmatch` (not `match`) so a trailing newline or suffix cannot slip through `$`.
        """
        if not payload or len(payload) > self.max_length:
            return None
        if not payload.isprintable():
            return None
        return payload if self.pattern.fullmatch(payload) else None

    def from_payload(self, payload: bytes) -> str | None:
        """The one rule from a QR code's bytes to a CID, for the daemon and every command: strict
        UTF-8 (bytes that are not UTF-8 are rejected, never guessed at), then `check`."""
        if len(payload) > 4 * self.max_length:  # no decoding a megabyte of junk
            return None
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return self.check(text)


def payload_text(payload: bytes) -> str:
    """A payload as text for people (snapshot, check): invalid UTF-8 shown escaped, never guessed."""
    return payload.decode("utf-8", errors="backslashreplace")


def escape_payload(payload: str | bytes, limit: int = const.REJECTED_LOG_CHARS) -> str:
    """A log-safe rendering: one line, ASCII only, control and non-ASCII characters escaped,
    truncated with the original length noted. Nothing a payload holds can forge a log line."""
    text = payload.decode("utf-8", errors="backslashreplace") if isinstance(payload, bytes) else payload
    escaped = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    if len(escaped) > limit:
        return f'"{escaped[:limit]}"...({len(text)} chars)'
    return f'"{escaped}"'
