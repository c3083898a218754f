"""What the receiver refuses, so one client cannot tie up its disk, memory, connections or a worker:
bodies over the cap, bodies of unknown length, request headers that never finish, bodies that come
too slowly, idempotency keys too long to be keys, and metadata too large or nested too deep to be the
contract's.

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
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..delivery import contract

log = logging.getLogger("edge_agent.receiver")

MAX_KEY_BYTES = 200
MAX_METADATA_BYTES = 64 << 10
MAX_METADATA_DEPTH = 32
DEFAULT_HEADER_TIMEOUT_S = 10.0
# A request body gets DEFAULT_BODY_TIMEOUT_S, and one more second for every DEFAULT_MIN_BODY_RATE bytes
# that have arrived. The rate is half the agent's own floor (upload.min_rate_bytes_per_s, 50 kB/s), so an
# agent on a link its own deadline accepts is never cut by the receiver; a client that stops sending is
# cut DEFAULT_BODY_TIMEOUT_S after its last earned second, however large it said the body would be.
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_MIN_BODY_RATE = 25_000


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


class BodyTooSlow(Exception):
    """The request body fell behind its deadline (raised from `receive`; BodyLimit answers 408)."""

    def __init__(self, got: int, length: int | None, waited_s: float, timeout_s: float, min_rate: float):
        size = f"{length} bytes" if length is not None else "a body of unknown length"
        super().__init__(f"request body too slow: {got} of {size} arrived in {waited_s:.1f} s (the receiver "
                         f"allows {timeout_s:g} s + 1 s per {min_rate:g} bytes received); send it again")
        self.got = got


class TimedBody:
    """A request's `receive` with the body's deadline, as Apache's mod_reqtimeout sets one
    (`body=10,MinRate=...`): the body has `timeout_s` from the moment its headers were complete, plus one
    second for every `min_rate` bytes received. So the whole body is due by timeout_s + size / min_rate,
    and a client that trickles is cut once it falls behind, not after the time its declared size would
    earn. Socket timeouts cannot do this: uvicorn times idle keep-alive connections only."""

    def __init__(self, receive: Any, length: int | None, timeout_s: float, min_rate: float):
        self._receive = receive
        self.length = length
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.got = 0
        self.complete = length == 0  # the whole body has arrived (nothing of it is left unread)
        self._started = time.monotonic()

    def due_in(self) -> float:
        """Seconds until the body has fallen behind (<= 0: it has)."""
        return self._started + self.timeout_s + self.got / self.min_rate - time.monotonic()

    async def __call__(self) -> dict[str, Any]:
        if self.complete:
            return await self._receive()
        left = self.due_in()
        try:
            if left <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(self._receive(), left)
        except TimeoutError:
            raise BodyTooSlow(self.got, self.length, time.monotonic() - self._started, self.timeout_s,
                              self.min_rate) from None
        if message["type"] == "http.request":
            self.got += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
        return message


class BodyLimit:
    """ASGI middleware: refuse bodies over the cap before reading them (413), and bodies that
    declare no length (411); give every body a deadline (TimedBody: 408 when it falls behind). Each
    refusal closes the connection: `Connection: close` makes the HTTP layer drop the socket instead of
    reading and discarding the refused body (gigabytes, at line rate, or a trickle for ever). Any reply
    sent before its request's body has all arrived closes the connection too, for the same reason."""

    def __init__(self, app: Any, max_bytes: int, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
                 min_body_rate: float = DEFAULT_MIN_BODY_RATE):
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.min_body_rate = min_body_rate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if scope["method"] == "POST":
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
        try:
            declared: int | None = int(length) if length is not None else None
        except ValueError:
            declared = None
        if declared is None and b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            declared = 0  # HTTP/1.1: a request without either header has no body
        body = TimedBody(receive, declared, self.body_timeout_s, self.min_body_rate)
        started = False

        async def send_closing_early(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body.complete:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, body, send_closing_early)
        except BodyTooSlow as exc:
            client = scope.get("client") or ("?", 0)
            key = headers.get(contract.HEADER_IDEMPOTENCY_KEY.lower().encode(), b"-").decode("latin-1")[:200]
            log.warning("closed connection from %s:%s path=%s clip=%s: %s", client[0], client[1], scope["path"],
                        key, exc)
            if started:
                raise  # the HTTP layer closes the connection under a reply already begun
            await self._refuse(send, 408, str(exc), contract.REASON_BODY_TOO_SLOW)

    @staticmethod
    async def _refuse(send: Any, status: int, detail: str, reason: str | None = None) -> None:
        reply: dict[str, str] = {"detail": detail}
        if reason:
            reply[contract.FIELD_REASON] = reason
        body = json.dumps(reply).encode()
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
