"""`/metrics` (Prometheus text) and `/healthz` over HTTP, on `metrics.port` when set.

The standard library's threading HTTP server: a dozen numbers scraped every 15 s do not justify
a web framework on the device. It runs in daemon threads and never touches the pipeline beyond
reading the Metrics registry and calling the health function.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_agent.metrics import Metrics

log = logging.getLogger(__name__)

# What a Prometheus server expects for the text exposition format (the same string as the
# official client library sends).
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A scraper that connects and says nothing must not hold a thread for ever.
REQUEST_TIMEOUT_S = 10.0

Health = Callable[[], tuple[bool, dict[str, Any]]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """`start()` serves in a daemon thread; `stop()` (safe before `start()` and more than once) ends it.

    Binding happens in the constructor, so a port in use fails there with an OSError naming it.
    `port=0` picks a free port (tests); `.port` tells which.
    """

    def __init__(self, metrics: Metrics, host: str, port: int, health: Health | None = None):
        self.metrics = metrics
        self.health: Health = health or (lambda: (True, {}))
        handler = _handler(self)
        server_cls = _Server6 if ":" in host else _Server
        try:
            self._httpd = server_cls((host, port), handler)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics server cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
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
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                            name="metrics-http", daemon=True)
            self._thread.start()
        log.info("metrics listening url=%s/metrics health=%s/healthz", self.url, self.url)

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._httpd.shutdown()  # only valid while serve_forever runs: it waits for it to return
                thread.join(timeout=5)
            self._httpd.server_close()

    # --- request handling (called on the server's threads) --------------------------------------

    def render_health(self) -> tuple[int, dict[str, Any]]:
        try:
            ok, detail = self.health()
        except Exception as exc:  # a broken health function is itself unhealthy, not a dropped connection
            log.warning("health check raised error=%s", exc)
            return 503, {"status": "error", "error": str(exc)}
        return (200 if ok else 503), {**detail, "status": "ok" if ok else "unhealthy"}


def _handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S
        server_version = "edge-agent-metrics"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every 15 s is not worth a log line

        def _send(self, status: int, body: bytes, ctype: str, head: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _route(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, server.metrics.prometheus_text().encode(), PROMETHEUS_CONTENT_TYPE, head)
            elif path in ("/healthz", "/health"):
                status, body = server.render_health()
                self._send(status, json.dumps(body, default=str).encode(), "application/json", head)
            else:
                self._send(404, b'{"detail": "not found: try /metrics or /healthz"}', "application/json", head)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._route(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._route(head=True)

    return Handler
