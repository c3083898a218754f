"""A real HTTP server on 127.0.0.1 that misbehaves on cue, for delivery tests.

Each request takes the next scripted action (then `ok` for ever):
- a status code, `(status, headers)` or `(status, headers, body)`: reply that;
- `stall`: read the body, never answer (until stall_s, then close);
- `stall_mid_body`: read half the body, then neither read nor answer (until stall_s);
- `slow_read`: read the body at `slow_rate` bytes/s, `slow_chunk` at a time (a poor uplink), answer 201;
- `reset_mid_body`: read half, send a TCP reset;
- `reset_after_body`: read it all, store it, reset before replying (the retry must be deduped);
- `stored_then_stall`: read it all, store it, hold the reply back (until stall_s, then close);
- `close_after_body`: read it all, close cleanly without a reply;
- `trickle`: read it all, then send a 201 reply one byte every `trickle_s` (until stall_s, then close);
- `("receipt", sha256)`: read it all, answer 201 whose receipt names `sha256` (None: no video stored),
  storing nothing: a server that kept other bytes than it was sent.

GET answers 200 on any path (a page a redirect may point at), recorded in `gets`. `post_started` is
set when the first POST's headers arrive: a test waits on it, not on a sleep, to act mid-upload.

Every request is recorded with its headers and parsed multipart fields (and, with `log_path`, one
JSON line per complete request: key and the video's sha256). A key already stored gets 409,
like a server that dedupes. A body cut short (the client died or gave up) is never stored.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Seen:
    key: str | None
    headers: dict[str, str]
    fields: dict[str, bytes]
    filename: str | None
    action: str
    complete: bool
    at: float = field(default_factory=time.monotonic)
    content_type: dict[str, str] = field(default_factory=dict)  # per multipart field
    body_bytes: int = 0

    @property
    def video_sha256(self) -> str | None:
        v = self.fields.get("video")
        return hashlib.sha256(v).hexdigest() if v is not None else None


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, bytes], str | None]:
    fields, filename, _ = parse_multipart_full(content_type, body)
    return fields, filename


def parse_multipart_full(content_type: str, body: bytes) -> tuple[dict[str, bytes], str | None, dict[str, str]]:
    """Fields by name, the file name of the file part, and each part's Content-Type (if it had one)."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, bytes] = {}
    types: dict[str, str] = {}
    filename = None
    if not msg.is_multipart():
        return fields, filename, types
    for part in msg.iter_parts():
        name = str(part.get_param("name", header="content-disposition"))
        fields[name] = part.get_payload(decode=True) or b""
        if "content-type" in part:
            types[name] = part.get_content_type()
        if part.get_filename():
            filename = part.get_filename()
    return fields, filename, types


class FlakyServer:
    def __init__(self, script: list[Any] | None = None, stall_s: float = 3.0, reply_delay_s: float = 0.0,
                 tls: ssl.SSLContext | None = None, slow_rate: int = 200_000, slow_chunk: int = 8192,
                 rcvbuf: int | None = None, trickle_s: float = 0.5,
                 log_path: Path | None = None):
        self.script = list(script or [])
        self.reply_delay_s = reply_delay_s  # a slow server: keeps a delivery in flight longer
        self.stall_s = stall_s
        self.slow_rate = slow_rate  # slow_read: bytes/s, taken slow_chunk bytes at a time
        self.slow_chunk = slow_chunk
        self.log_path = log_path
        self.trickle_s = trickle_s
        self.gets: list[str] = []
        self.seen: list[Seen] = []
        self.delivered: dict[str, Seen] = {}
        self.post_started = threading.Event()  # a POST's headers arrived: an upload is in progress
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

            def log_message(self, *_a: Any) -> None:
                pass

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _read(self, n: int, rate: int | None = None) -> bytes:
                """Read up to n bytes (fewer if the client goes away), optionally at `rate` bytes/s."""
                out = bytearray()
                started = time.monotonic()
                while len(out) < n:
                    try:
                        chunk = (self.rfile.read1(min(65536, n - len(out))) if rate is None
                                 else self.rfile.read(min(outer.slow_chunk, n - len(out))))
                    except OSError:
                        break
                    if not chunk:
                        break
                    out += chunk
                    if rate:
                        ahead = len(out) / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                return bytes(out)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with outer._lock:
                    outer.gets.append(self.path)
                data = b'{"status": "ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                outer.post_started.set()
                with outer._lock:
                    action = outer.script.pop(0) if outer.script else "ok"
                length = int(self.headers.get("Content-Length", "0"))
                key = self.headers.get("Idempotency-Key")
                headers = {k: v for k, v in self.headers.items()}
                if action in ("reset_mid_body", "stall_mid_body"):
                    got = self._read(length // 2)
                    outer._record(Seen(key, headers, {}, None, action, False, body_bytes=len(got)))
                    if action == "stall_mid_body":
                        time.sleep(outer.stall_s)
                        self.close_connection = True
                    else:
                        self._reset()
                    return
                body = self._read(length, outer.slow_rate if action == "slow_read" else None)
                complete = len(body) == length
                fields, filename, types = parse_multipart_full(self.headers.get("Content-Type", ""), body)
                seen = Seen(key, headers, fields, filename, str(action), complete, content_type=types,
                            body_bytes=len(body))
                outer._record(seen)
                if not complete:  # the client is gone or gave up: nothing to store, nobody to answer
                    self.close_connection = True
                    return
                if action == "reset_after_body":
                    outer._store(key, seen)  # the server did store it: the retry must be deduped
                    self._reset()
                    return
                if action == "stored_then_stall":  # stored, and the reply held back: a kill now loses it
                    outer._store(key, seen)
                    time.sleep(outer.stall_s)
                    self.close_connection = True
                    return
                if action == "close_after_body":
                    self.close_connection = True
                    return
                if action == "stall":
                    time.sleep(outer.stall_s)
                    self.close_connection = True
                    return
                if action == "trickle":
                    reply = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"
                    ends = time.monotonic() + outer.stall_s
                    self.close_connection = True
                    for i in range(len(reply)):
                        if time.monotonic() > ends:
                            return
                        try:
                            self.wfile.write(reply[i:i + 1])
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(outer.trickle_s)
                    return
                if outer.reply_delay_s:
                    time.sleep(outer.reply_delay_s)
                if isinstance(action, tuple) and action[0] == "receipt":  # 201, nothing stored under the key
                    self._reply(201, {}, json.dumps({"id": "x", "sha256": action[1]}).encode())
                    return
                if action in ("ok", "slow_read"):
                    status, extra, payload = 201, {}, None
                else:
                    t = action if isinstance(action, tuple) else (action,)
                    status, extra, payload = t[0], (t[1] if len(t) > 1 else {}), (t[2] if len(t) > 2 else None)
                if 200 <= status < 300 and not outer._store(key, seen):
                    status = 409
                self._reply(status, extra, payload if payload is not None else f'{{"status": {status}}}'.encode())

            def _reply(self, status: int, extra: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *_a: None  # clients killed mid-request are the point of the tests
        if rcvbuf:  # a small receive window, so a slow reader really slows the sender
            self.httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)
            if self.log_path is not None and seen.complete:
                with self.log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": seen.key, "video_sha256": seen.video_sha256,
                                        "action": seen.action}) + "\n")

    def _store(self, key: str | None, seen: Seen) -> bool:
        """Keep the first complete request per key; False for a key already stored."""
        with self._lock:
            if key and key in self.delivered:
                return False
            if key:
                self.delivered[key] = seen
            return True

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}/cid"

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
