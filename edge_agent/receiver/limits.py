"""What the receiver refuses, so one client cannot tie up its disk, memory, connections or a worker:
bodies over the cap, bodies of unknown length, request headers that never finish, idempotency keys
too long to be keys, and metadata too large or nested too deep to be the contract's.

Metadata limits (422 naming the limit, checked before the JSON is parsed, so a hostile document
costs one linear scan): at most MAX_METADATA_BYTES of UTF-8, and arrays and objects nested at most
MAX_METADATA_DEPTH deep. The agent's metadata is about 1 kB and 3 deep; Python's JSON parser
recurses per level and fails past about 1,000 with an error that would become a 500, which a
client retries for ever.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("edge_agent.receiver")

MAX_KEY_BYTES = 200
MAX_METADATA_BYTES = 64 << 10
MAX_METADATA_DEPTH = 32
DEFAULT_HEADER_TIMEOUT_S = 10.0


def key_error(key: str | None, what: str = "Idempotency-Key") -> str | None:
    """A clear reason to refuse a key, or None: keys are stored and locked per request, so a
    16 kB key would cost 16 kB several times over in the database for nothing."""
    if key is not None and len(key.encode()) > MAX_KEY_BYTES:
        return f"{what} is {len(key.encode())} bytes, over the {MAX_KEY_BYTES} byte limit (use a UUID)"
    return None


def metadata_error(text: str) -> str | None:
    """A clear reason to refuse metadata before parsing it (too large, nested too deep), or None."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_METADATA_BYTES:
        return f"metadata is {size} bytes, over the {MAX_METADATA_BYTES} byte limit"
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # brackets inside strings do not count
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_METADATA_DEPTH:
                    return f"metadata is nested deeper than the {MAX_METADATA_DEPTH} level limit"
        elif ch in "]}":
            depth -= 1
    return None


class BodyLimit:
    """ASGI middleware: refuse bodies over the cap before reading them (413), and bodies that
    declare no length (411), then close the connection: `Connection: close` makes the HTTP layer
    drop the socket instead of reading and discarding the refused body (gigabytes, at line rate)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is None:
                await self._refuse(send, 411, "Content-Length required")
                return
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0 or n > self.max_bytes:
                await self._refuse(send, 413, f"request body of {length.decode(errors='replace')[:40]} bytes is over "
                                              f"the {self.max_bytes} byte limit")
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Any, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for a complete request header, from the connection's
    first moment and from the first byte of each later request. uvicorn only times out idle
    keep-alive connections, and cancels even that once a byte arrives, so a client sending half a
    header held a connection (and its memory) forever."""

    class HeaderTimeoutH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self._header_timer is None:
                    self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
                log.warning("closed connection from %s: no complete request header in %.0f s", peer, timeout_s)
                self.transport.close()

    return HeaderTimeoutH11
