"""Upload failures in plain words, for the log line, the spool's last error and `edge-agent check`.

requests wraps the cause three deep (ConnectionError > MaxRetryError > NewConnectionError >
ConnectionRefusedError) and its text puts the useful part last, where a length cap cuts it off:
`HTTPConnectionPool(host=..., port=8799): Max retries exceeded ... Failed to establish a new
connection: [...`. A technician needs the cause first: `connection refused by 127.0.0.1:8799 (is
the edge server running?)`. `describe_error` walks the chain to the innermost cause and names it;
`describe_reply` does the same for a server's refusal (`HTTP 413 from the server: clip too large ...`).
"""

from __future__ import annotations

import errno
import http.client
import json
import re
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import urllib3

# How much of an unknown error's text or a server's reply goes into one line.
MAX_CHARS = 200
_TIMEOUT_IN_TEXT = re.compile(r"timeout=([0-9.]+)")
_LIMIT_IN_REPLY = (re.compile(r"(\d+)[ -]bytes? limit"), re.compile(r"limit\D{0,20}(\d+)"))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (args, urllib3's `.reason`, __cause__, __context__), outermost first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        inner = [a for a in cur.args if isinstance(a, BaseException)]
        reason = getattr(cur, "reason", None)
        todo += [*inner, *([reason] if isinstance(reason, BaseException) else []),
                 *(e for e in (cur.__cause__, cur.__context__) if e is not None)]


def _where(url: str | None, chain: list[BaseException]) -> str:
    """host:port of the request, from the URL, else from the urllib3 pool or connection in the chain."""
    if url:
        parts = urlsplit(url)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            return f"{parts.hostname}:{port}"
    for exc in chain:
        for holder in (getattr(exc, "pool", None), getattr(exc, "conn", None)):
            if holder is not None and getattr(holder, "host", None):
                return f"{holder.host}:{holder.port}"
    return "the server"


def _host(where: str) -> str:
    return where.rsplit(":", 1)[0] if ":" in where else where


def _seconds(chain: list[BaseException], timeout_s: float | None) -> str:
    if timeout_s is None:
        for exc in chain:
            m = _TIMEOUT_IN_TEXT.search(str(exc))
            if m:
                timeout_s = float(m.group(1))
                break
    return f" after {timeout_s:g} s" if timeout_s is not None else ""


def describe_error(exc: BaseException, url: str | None = None, timeout_s: float | None = None) -> str:
    """One line that says what went wrong with a request, cause first, in words a technician can act on.

    `url` names the server when the exception does not; `timeout_s` the wait, when the text does not say it."""
    chain = list(_chain(exc))
    where = _where(url, chain)
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            detail = e.verify_message or e.reason or "verification failed"
            if "hostname" in str(detail).lower() or "ip address mismatch" in str(detail).lower():
                return f"TLS: the certificate of {where} is for another name ({detail})"
            return f"TLS: certificate not trusted ({detail}); set upload.ca_file to the CA that signed it"
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return f"TLS: {str(e.reason or e.strerror or e).replace('_', ' ').lower()} ({where})"
    for e in chain:
        if isinstance(e, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return f"name {_host(where)} does not resolve (check the host name in upload.url and the device's DNS)"
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return f"connection refused by {where} (is the edge server running?)"
    for e in chain:
        code = getattr(e, "errno", None)
        if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"no route to {where} ({'network' if code == errno.ENETUNREACH else 'host'} unreachable: " \
                   "check the network cable, Wi-Fi or VPN)"
    for e in chain:
        if isinstance(e, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
                e, urllib3.exceptions.NewConnectionError):
            return f"timed out{_seconds(chain, timeout_s)} connecting to {where} (a firewall drops the traffic, " \
                   "or the server is down)"
    for e in chain:
        if isinstance(e, urllib3.exceptions.ReadTimeoutError | TimeoutError | socket.timeout):
            return f"timed out{_seconds(chain, timeout_s)} waiting for {where} to answer"
    for e in chain:
        if isinstance(e, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected):
            return f"{where} closed the connection without an answer (a proxy or the server dropped it)"
    for e in reversed(chain):  # the innermost OS error's own words
        if isinstance(e, OSError) and e.strerror:
            return f"{e.strerror.lower()} ({where})"
    text = " ".join(str(chain[-1]).split()) or type(chain[-1]).__name__
    text = f"{type(chain[-1]).__name__}: {text}" if text != type(chain[-1]).__name__ else text
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "..."


def reply_text(body: str) -> str:
    """A server's reply in words: FastAPI's {"detail": "..."} unwrapped; line breaks folded and control
    characters escaped (nothing a server says can forge a log line); capped, with the length noted."""
    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        text = data["detail"]
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in " ".join(text.split()))  # one log line
    return text if len(text) <= MAX_CHARS else f"{text[:MAX_CHARS]}...({len(body)} chars)"


def describe_reply(status: int, body: str, size_bytes: int | None = None) -> str:
    """A server's refusal: `HTTP 413 from the server: clip too large (...)`, `HTTP 503 from the server: busy`."""
    said = reply_text(body)
    if status == 413:
        m = next((m for m in (p.search(said) for p in _LIMIT_IN_REPLY) if m), None)
        limit = f"limit {_mb(int(m.group(1)))}" if m else "the server's limit"
        clip = f", this clip {_mb(size_bytes)}" if size_bytes else ""
        return f"HTTP 413 from the server: clip too large ({limit}{clip})" + (f": {said}" if said and not m else "")
    return f"HTTP {status} from the server" + (f": {said}" if said else "")


def _mb(n: int) -> str:
    return f"{n} bytes" if n < 1_000_000 else f"{n / 1e6:.1f} MB"
