"""A real HTTP server on 127.0.0.1 that misbehaves on cue, for delivery tests.

Each request takes the next scripted action (then `ok` for ever): a status code with headers,
`stall` (read the body, never answer), `reset_mid_body` (read half, send a TCP reset),
`reset_after_body` (read it all, reset before replying). Every request is recorded with its
headers and its parsed multipart fields, and a key already answered 2xx gets 409, like a server
that dedupes.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

    @property
    def video_sha256(self) -> str | None:
        v = self.fields.get("video")
        return hashlib.sha256(v).hexdigest() if v is not None else None


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, bytes], str | None]:
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, bytes] = {}
    filename = None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = part.get_payload(decode=True) or b""
        if part.get_filename():
            filename = part.get_filename()
    return fields, filename


class FlakyServer:
    def __init__(self, script: list[Any] | None = None, stall_s: float = 3.0, reply_delay_s: float = 0.0,
                 tls: ssl.SSLContext | None = None):
        self.script = list(script or [])
        self.reply_delay_s = reply_delay_s  # a slow server: keeps a delivery in flight longer
        self.stall_s = stall_s
        self.seen: list[Seen] = []
        self.delivered: dict[str, Seen] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                pass

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                with outer._lock:
                    action = outer.script.pop(0) if outer.script else "ok"
                length = int(self.headers.get("Content-Length", "0"))
                key = self.headers.get("Idempotency-Key")
                headers = {k: v for k, v in self.headers.items()}
                if action == "reset_mid_body":
                    self.rfile.read(length // 2)
                    outer._record(Seen(key, headers, {}, None, action, False))
                    self._reset()
                    return
                body = self.rfile.read(length)
                fields, filename = parse_multipart(self.headers.get("Content-Type", ""), body)
                seen = Seen(key, headers, fields, filename, str(action), True)
                outer._record(seen)
                if action == "reset_after_body":
                    with outer._lock:  # the server did store it: the retry must be deduped
                        if key:
                            outer.delivered.setdefault(key, seen)
                    self._reset()
                    return
                if action == "stall":
                    time.sleep(outer.stall_s)
                    self.close_connection = True
                    return
                if outer.reply_delay_s:
                    time.sleep(outer.reply_delay_s)
                status, extra = (action if isinstance(action, tuple) else (action, {})) if action != "ok" else (201, {})
                with outer._lock:
                    if 200 <= status < 300 and key in outer.delivered:
                        status = 409
                    elif 200 <= status < 300 and key:
                        outer.delivered[key] = seen
                payload = f'{{"status": {status}}}'.encode()
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *_a: None  # clients killed mid-request are the point of the tests
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}/cid"

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
