"""The HTTP request of one upload: its streamed multipart body, its overall deadline and its send timeout.

The body is streamed from the clip file, opened fresh for each attempt, so a 75 MB clip costs
256 KiB of memory, not 150 MB (requests' `files=` builds the whole body in memory). Streaming also
lets the uploader enforce what the config promises: the body must go out within read_timeout_s +
size / min_rate_bytes_per_s (a trickling link is cut and retried, not held for ever), `stop()` cuts
an upload in progress, and the clip's bytes are hashed on the way out: if they no longer match
metadata.clip.sha256 the request is aborted before its last byte, so the server never receives a
complete wrong clip.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import urllib3
from requests.adapters import HTTPAdapter

from edge_agent.delivery import contract

# Bytes handed to the socket per send: big enough for line rate on a LAN, small enough that stop()
# and the send deadline are checked often.
BLOCK_BYTES = 256 << 10


class BodyAborted(Exception):
    """Raised from inside the request body to cut an upload: kind is stop, too_slow or clip_changed.
    Not an OSError, so urllib3 and requests pass it through unwrapped."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


class MultipartBody:
    """A multipart/form-data body (the text fields, then the clip) read lazily from the clip file.

    requests sends it as a stream with a Content-Length (it has `__len__` and `__iter__`); urllib3
    pulls it with `read(blocksize)`.
    """

    def __init__(self, fields: list[tuple[str, str]], video: Path | None, filename: str, size: int,
                 sha256: str | None, deadline_mono: float, stop: threading.Event):
        self.boundary = uuid.uuid4().hex
        while any(self.boundary in value for _, value in fields):  # cannot happen; costs nothing to be sure
            self.boundary = uuid.uuid4().hex
        b = self.boundary.encode("ascii")
        head = bytearray()
        for name, value in fields:
            head += (b"--" + b + b'\r\nContent-Disposition: form-data; name="' + name.encode("ascii") + b'"\r\n\r\n'
                     + value.encode("utf-8") + b"\r\n")
        if video is not None:
            head += (b"--" + b + b'\r\nContent-Disposition: form-data; name="' + contract.FIELD_VIDEO.encode("ascii")
                     + b'"; filename="' + filename.encode("ascii") + b'"\r\nContent-Type: '
                     + contract.VIDEO_CONTENT_TYPE.encode("ascii") + b"\r\n\r\n")
        self._head = bytes(head)
        self._tail = (b"\r\n" if video is not None else b"") + b"--" + b + b"--\r\n"
        self._size = size if video is not None else 0
        self._length = len(self._head) + self._size + len(self._tail)
        self._sha = sha256
        self._hash = hashlib.sha256()
        self._deadline = deadline_mono
        self._stop = stop
        self._pos = 0
        self._file_left = self._size
        self._fh = video.open("rb") if video is not None else None  # a fresh handle for every attempt

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        while block := self.read(BLOCK_BYTES):
            yield block

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self._length
        out = bytearray()
        while len(out) < n:
            chunk = self._next(n - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def _next(self, n: int) -> bytes:
        if self._stop.is_set():
            raise BodyAborted("stop", "uploader stopping")
        if time.monotonic() > self._deadline:
            raise BodyAborted("too_slow", "body not sent within upload.read_timeout_s + size / "
                                          "upload.min_rate_bytes_per_s")
        head_len = len(self._head)
        if self._pos < head_len:
            chunk = self._head[self._pos:self._pos + n]
        elif self._file_left > 0:
            assert self._fh is not None
            chunk = self._fh.read(min(n, self._file_left))
            if not chunk:
                raise BodyAborted("clip_changed", f"clip file ended {self._file_left} bytes early")
            self._hash.update(chunk)
            self._file_left -= len(chunk)
            if self._file_left == 0 and self._sha and self._hash.hexdigest() != self._sha:
                raise BodyAborted("clip_changed", "clip bytes no longer match metadata.clip.sha256")
        else:
            off = self._pos - head_len - self._size
            chunk = self._tail[off:off + n]
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class DeadlineCutter:
    """Enforces an upload's overall deadline (connect + send + the whole answer).

    Socket timeouts bound each recv, not the request: a server that trickles a byte every few
    seconds would hold the uploader for ever. A timer shuts the connection's socket down at the
    deadline instead, which wakes the blocked send or recv at once; `stop()` uses the same cut.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.reason: str | None = None

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.reason is not None:  # cut before the socket existed: cut it now
                self._shutdown()

    def cut(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)


# The request in flight on this thread: its send timeout and the deadline cutter that sees its socket.
_sending = threading.local()


@contextlib.contextmanager
def send_limits(timeout_s: float, cutter: DeadlineCutter) -> Iterator[None]:
    """Requests sent on this thread inside the block send under `timeout_s` and hand their socket to
    `cutter` (the adapter below is shared by the session; the limits are the request's own)."""
    _sending.timeout, _sending.cutter = timeout_s, cutter
    try:
        yield
    finally:
        _sending.timeout = _sending.cutter = None


class _SendTimeout:
    """urllib3 sends a request body under the *connect* timeout, so on a slow uplink a send that waits
    for the kernel's send buffer to drain for longer than 5 s fails, again on every retry. Sends get
    the request's own budget instead; connect keeps connect_timeout_s, the reply the read timeout.
    The connected socket is handed to the request's DeadlineCutter."""

    sock: Any

    def send(self, data: Any) -> None:
        timeout = getattr(_sending, "timeout", None)
        if timeout is not None:
            if self.sock is None:
                self.connect()  # type: ignore[attr-defined]
            self.sock.settimeout(timeout)
        cutter = getattr(_sending, "cutter", None)
        if cutter is not None and self.sock is not None:
            cutter.attach(self.sock)
        super().send(data)  # type: ignore[misc]


class _HTTPConnection(_SendTimeout, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_SendTimeout, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class UploadAdapter(HTTPAdapter):
    """requests' adapter with the send timeout above and bigger socket writes (urllib3's are 16 KiB)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("blocksize", BLOCK_BYTES)
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
