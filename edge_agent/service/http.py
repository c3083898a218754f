"""The device's web server: the live view at `/`, `/metrics` (Prometheus text) and `/healthz`, on
`http.port` when set.

The standard library's threading HTTP server: one page, a few JSON and JPEG routes and a scrape
every 15 s do not justify a web framework on the device. It never touches the pipeline beyond the
Metrics registry, the health function and the `LiveView` (whose frames cost nothing unless asked).

Secure by default: it listens on loopback unless told otherwise, and anywhere else only with a
password (HTTP Basic, checked with `hmac.compare_digest`), which every path but `/healthz` asks for
(`/metrics` too unless `http.metrics_public`). Optional TLS. No path opens a file by a name taken
from the request: the page is package data read by a fixed name, pictures come from memory or from
the no-read store's own listing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.delivery.cid import escape_payload
from edge_agent.metrics import Metrics
from edge_agent.redact import redact_data
from edge_agent.service.http_limits import LineLimiter, LoginBackoff, suppressed
from edge_agent.service.liveview import MJPEG_BOUNDARY

if TYPE_CHECKING:
    from edge_agent.config import HttpConfig
    from edge_agent.service.liveview import LiveView

log = logging.getLogger(__name__)

# What a Prometheus server expects for the text exposition format (the same string as the
# official client library sends).
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A client that connects and says nothing must not hold a thread for ever.
REQUEST_TIMEOUT_S = 10.0
MJPEG_FPS = 4.0
# Live streams served at once. Each costs a thread and ~400 kB/s of 720p JPEGs (the page itself polls
# /frame.jpg and holds no stream); more get 503 with Retry-After.
MJPEG_MAX_VIEWERS = 8
MJPEG_RETRY_AFTER_S = 30
PASSWORD_CREDENTIAL = "http-password"
# The only words /healthz shows besides numbers: a part's state from a fixed vocabulary (clip encoding, the
# spool's disk, the last config reload, the source), which cannot carry a URL or a password as an error's
# text could.
STATUS_WORDS = frozenset({"ok", "down", "full", "none", "applied", "refused", "starting", "up", "away", "ended"})
# ids in picture paths: what the store and the tracker make, nothing else (no dots, no slashes)
_ID = re.compile(r"^/(thumbs|noreads)/([A-Za-z0-9_-]{1,80})\.jpg$")

Health = Callable[[], tuple[bool, dict[str, Any]]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # the listen backlog: socketserver's 5 overflows when clients connect faster than a busy process
    # (decode and detect threads holding the GIL) accepts them, and each connection dropped then waits
    # out the kernel's 1 s SYN retry: a page's burst of requests, or reconnecting viewers, stall
    request_queue_size = 64
    # socketserver's own handle_error prints a traceback to stderr for every connection a client
    # resets (30 lines each, outside logging); this one hands the error to the WebServer instead
    on_error: Callable[[BaseException | None, Any], None] | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.on_error is not None:
            self.on_error(sys.exc_info()[1], client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class ExposureRefused(Exception):
    """Bound beyond loopback without a password: the message says why and what to set."""


@dataclass(frozen=True)
class Access:
    password: str | None = None
    metrics_public: bool = False
    cert_file: str | None = None
    key_file: str | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def access_for(cfg: HttpConfig) -> Access:
    """The password (file or systemd credential `http-password`) and TLS files for `cfg`; raises
    ExposureRefused when the server would listen beyond loopback without a password, and
    CredentialError when the password file cannot be read or it or the TLS key is not private."""
    from edge_agent.delivery.credentials import read_secret, require_private, secret_path

    path = secret_path(cfg.password_file, PASSWORD_CREDENTIAL)
    password = read_secret(path, "http password") if path is not None else None
    if password is None and not is_loopback(cfg.host):
        raise ExposureRefused(
            f"http.host is {cfg.host}: the web server shows the camera and the events to anyone who can reach it, "
            "so beyond loopback it needs a password: set http.password_file (or the systemd credential "
            f"{PASSWORD_CREDENTIAL}), or keep http.host 127.0.0.1 and use an SSH tunnel")
    if bool(cfg.cert_file) != bool(cfg.key_file):
        raise ExposureRefused("TLS needs both http.cert_file and http.key_file")
    if cfg.key_file:
        require_private(Path(cfg.key_file), "http TLS key")
    return Access(password, cfg.metrics_public, cfg.cert_file, cfg.key_file)


class WebServer:
    """`start()` serves in a daemon thread; `stop()` (safe before `start()` and more than once) ends it.

    Binding happens in the constructor, so a port in use fails there with an OSError naming it.
    `port=0` picks a free port (tests); `.port` tells which.
    """

    def __init__(self, metrics: Metrics | None, host: str, port: int, health: Health | None = None, *,
                 view: LiveView | None = None, access: Access | None = None):
        self.metrics = metrics
        self.health: Health = health or (lambda: (True, {}))
        self.view = view
        self.access = access or Access()
        self.stopping = threading.Event()
        self.lines = LineLimiter()
        self.logins = LoginBackoff()
        self.viewers = threading.BoundedSemaphore(MJPEG_MAX_VIEWERS)
        handler = _handler(self)
        server_cls = _Server6 if ":" in host else _Server
        try:
            self._httpd = server_cls((host, port), handler)
        except OSError as exc:
            raise OSError(exc.errno, f"web server cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self._httpd.on_error = self.connection_error
        if self.access.cert_file:
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(self.access.cert_file, self.access.key_file)
            except (OSError, ssl.SSLError) as exc:
                self._httpd.server_close()
                raise OSError(f"web server TLS: cannot load http.cert_file {self.access.cert_file} / "
                              f"http.key_file {self.access.key_file}: {exc}") from None
            # the handshake happens on the request's own thread (its first read), so a client that
            # connects and stays silent holds that thread until REQUEST_TIMEOUT_S, never the accept loop
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.access.cert_file else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                            name="http", daemon=True)
            self._thread.start()
        log.info("web server listening url=%s/ metrics=%s/metrics health=%s/healthz access=%s", self.url, self.url,
                 self.url, "password-protected" if self.access.password else "open (loopback only)")

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._httpd.shutdown()  # only valid while serve_forever runs: it waits for it to return
                thread.join(timeout=5)
            self._httpd.server_close()
        if self.view is not None:
            self.view.close()

    # --- request handling (called on the server's threads) --------------------------------------

    def render_health(self) -> tuple[int, dict[str, Any]]:
        """The status and figures only: /healthz is open without a password, and any text (an error
        naming the camera's URL) could carry a secret, so none is shown; the log has the details."""
        try:
            ok, detail = self.health()
        except Exception as exc:  # a broken health function is itself unhealthy, not a dropped connection
            log.warning("health check raised error=%s", exc)
            return 503, {"status": "error"}
        figures = {k: v for k, v in detail.items()
                   if v is None or isinstance(v, bool | int | float) or (isinstance(v, str) and v in STATUS_WORDS)}
        return (200 if ok else 503), {**figures, "status": "ok" if ok else "unhealthy"}

    def connection_error(self, exc: BaseException | None, client: Any) -> None:
        """A request's thread ended with an exception: a client that reset or dropped the connection
        (or spoke plain HTTP to TLS) is one rate-limited line, a fault of ours one rate-limited error."""
        who = client[0] if isinstance(client, tuple) and client else "?"
        if isinstance(exc, OSError):  # resets, broken pipes, timeouts, TLS handshakes gone wrong
            n = self.lines.allow("connection")
            if n is not None:
                log.info("web client %s dropped the connection: %s%s", who, _reason(exc), suppressed(n))
            return
        n = self.lines.allow("error")
        if n is not None:
            log.error("web request from %s failed: %s%s", who, _reason(exc), suppressed(n), exc_info=exc)

    def bad_request(self, client: str, message: str) -> None:
        n = self.lines.allow("bad-request")
        if n is not None:
            log.info("web client %s sent a bad request: %s%s", client, escape_payload(message, limit=200),
                     suppressed(n))

    def login_failed(self, client: str) -> int:
        """Count a wrong password from `client`; returns the seconds it now waits before its next try."""
        failures, wait = self.logins.failed(client)
        if self.metrics is not None:
            self.metrics.http_auth_failures.inc()
        n = self.lines.allow("login")
        if n is not None:  # the address and the count, never what was tried
            log.warning("web login failed client=%s failures=%d next_try_in_s=%.0f%s", client, failures, wait,
                        suppressed(n))
        everyone, shared = self.logins.everyone()
        if shared > 0 and (n := self.lines.allow("login-everyone")) is not None:
            log.warning("web logins held for every address: %d wrong passwords from %d addresses since the last "
                        "quiet %.0f min (a guesser spreading over addresses?); next try in %.0f s; clients that "
                        "logged in lately are not held%s", everyone, self.logins.clients(),
                        self.logins.forget_s / 60, shared, suppressed(n))
        return int(wait)

    def authorized(self, header: str | None) -> bool:
        want = self.access.password
        if want is None:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            _user, _, given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given.encode(), want.encode())


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def page() -> bytes:
    return resources.files("edge_agent.service.web").joinpath("index.html").read_bytes()


def _handler(server: WebServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S
        server_version = "edge-agent"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every 15 s and a page polling every second are not worth a log line each

        def log_error(self, format: str, *args: Any) -> None:
            # malformed request lines and headers, and clients that connect and say nothing
            server.bad_request(self.client_address[0], format % args)

        def _send(self, status: int, body: bytes, ctype: str, head: bool, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, body: Any, head: bool, extra: dict[str, str] | None = None) -> None:
            # every string shown is redacted: a status names the source, whose URL may carry a login
            self._send(status, json.dumps(redact_data(body), default=str).encode(), "application/json", head, extra)

        def _logged_in(self, head: bool) -> bool:
            """Basic auth with a per-client back-off; False when a reply (401 or 429) was sent."""
            if server.access.password is None:
                return True
            header = self.headers.get("Authorization")
            client = self.client_address[0]
            if header is not None:  # a request without credentials (a browser's first) is no guess
                held = server.logins.held(client)
                if held is not None:  # refused unchecked: a guess made before its time tells nothing
                    whose = "on this device" if held.everyone else f"from {client}"
                    self._json(429, {"detail": f"too many wrong passwords {whose}: try again in {held.seconds} s"},
                               head, {"Retry-After": str(held.seconds)})
                    return False
                if server.authorized(header):
                    server.logins.succeeded(client)
                    return True
                server.login_failed(client)
            self._send(401, b'{"detail": "password required"}', "application/json", head,
                       {"WWW-Authenticate": 'Basic realm="edge-agent", charset="UTF-8"'})
            return False

        def _route(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/healthz", "/health"):
                status, body = server.render_health()
                return self._json(status, body, head)
            public = path == "/metrics" and server.access.metrics_public
            if not public and not self._logged_in(head):
                return None
            view = server.view
            if path == "/metrics" and server.metrics is not None:
                return self._send(200, server.metrics.prometheus_text().encode(), PROMETHEUS_CONTENT_TYPE, head)
            if view is None:
                return self._json(404, {"detail": "not found: try /metrics or /healthz"}, head)
            if path in ("/", "/index.html"):
                return self._send(200, page(), "text/html; charset=utf-8", head,
                                  {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                   "script-src 'self' 'unsafe-inline'; img-src 'self' blob:"})
            if path == "/api/status":
                return self._json(200, view.status(), head)
            if path == "/frame.jpg":
                jpeg = view.frame_jpeg()
                if jpeg is None:
                    return self._json(503, {"detail": "no frame yet: the source has not delivered one"}, head)
                return self._send(200, jpeg, "image/jpeg", head)
            if path == "/live.mjpeg":
                return self._mjpeg(view, head)
            m = _ID.match(path)
            if m:
                kind, ident = m.groups()
                body = view.thumbnail(ident) if kind == "thumbs" else view.noread_image(ident)
                if body is None:
                    return self._json(404, {"detail": f"no such picture: {ident}"}, head)
                return self._send(200, body, "image/jpeg", head)
            return self._json(404, {"detail": "not found: try /, /api/status, /metrics or /healthz"}, head)

        def _mjpeg(self, view: LiveView, head: bool) -> None:
            """The shared rendered parts, at most MJPEG_FPS, to at most MJPEG_MAX_VIEWERS at once: a
            viewer holds a thread and its socket, never a frame of its own (a slow one blocks in send)."""
            if not server.viewers.acquire(blocking=False):
                n = server.lines.allow("mjpeg-full")
                if n is not None:
                    log.info("web client %s refused a live stream: %d streams already open%s",
                             self.client_address[0], MJPEG_MAX_VIEWERS, suppressed(n))
                return self._json(503, {"detail": f"{MJPEG_MAX_VIEWERS} live streams are open, the most this "
                                        "device serves: close one, or watch the page at / (it polls pictures)"},
                                  head, {"Retry-After": str(MJPEG_RETRY_AFTER_S)})
            try:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if head:
                    return None
                seq = -1
                while not server.stopping.is_set():
                    sent = time.monotonic()
                    shown = view.next_frame(seq, 1.0)
                    if shown is not None and shown.seq != seq:
                        self.wfile.write(shown.part)
                        seq = shown.seq
                    server.stopping.wait(max(0.0, 1 / MJPEG_FPS - (time.monotonic() - sent)))
            except OSError:
                return None  # the viewer left (a reset, a broken pipe, a TLS error)
            finally:
                server.viewers.release()
            return None

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._route(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._route(head=True)

    return Handler
