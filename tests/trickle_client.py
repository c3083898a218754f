"""A client that sends a request's headers and the start of a clip, then trickles the rest a byte at a
time, as a stalled uplink or a slowloris does: for the receiver's body deadline
(tests/test_receiver_limits.py, benchmarks/trickle_bodies.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass

BOUNDARY = b"trickle-boundary"


@dataclass
class Trickled:
    status: int | None  # the reply's status; None when the server closed without one
    reason: str | None  # the reply's `reason`
    closed_after_s: float | None  # from the moment the headers were sent to the server's close; None: never
    sent: int  # body bytes sent


def _reply(buf: bytes) -> tuple[int | None, str | None]:
    if not buf.startswith(b"HTTP/1.1 "):
        return None, None
    head, _, body = buf.partition(b"\r\n\r\n")
    try:
        reason = json.loads(body).get("reason")
    except ValueError:
        reason = None
    return int(head.split()[1]), reason


def trickle(port: int, declared: int = 10_000_000, every_s: float = 0.5, give_up_s: float = 60.0,
            ready: threading.Barrier | None = None, path: str = "/cid") -> Trickled:
    """POST a body declared `declared` bytes long, one byte of video every `every_s` after its start,
    until the server answers and closes (or `give_up_s`). `ready` is passed once the headers are out."""
    start = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="cid"\r\n\r\nCID-TRICKLE\r\n--' + BOUNDARY
             + b'\r\nContent-Disposition: form-data; name="video"; filename="t.mp4"\r\n'
             + b"Content-Type: video/mp4\r\n\r\n")
    headers = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n\r\n").encode()
    buf = b""
    sent = len(start)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(headers + start)
        t0 = time.monotonic()
        if ready is not None:
            ready.wait()
        sock.settimeout(every_s)
        while time.monotonic() - t0 < give_up_s:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                try:
                    sock.send(b"v")
                    sent += 1
                except OSError:
                    break
                continue
            except OSError:
                break
            if not data:
                status, reason = _reply(buf)
                return Trickled(status, reason, time.monotonic() - t0, sent)
            buf += data
        else:
            status, reason = _reply(buf)
            return Trickled(status, reason, None, sent)
    status, reason = _reply(buf)
    return Trickled(status, reason, time.monotonic() - t0, sent)
