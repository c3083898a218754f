"""`/metrics` (Prometheus text) and `/healthz` over HTTP, on `metrics.port` when set.

The standard library's threading HTTP server: a dozen numbers scraped every 15 s do not justify
a web framework on the device.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .metrics import Metrics

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, dict[str, Any]]]


class MetricsServer:
    def __init__(self, metrics: Metrics, host: str, port: int, health: Health | None = None):
        outer = self
        self.metrics = metrics
        self.health = health or (lambda: (True, {}))

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, outer.metrics.prometheus_text().encode(), "text/plain; version=0.0.4")
                elif path == "/healthz":
                    ok, detail = outer.health()
                    body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b'{"detail": "not found"}', "application/json")

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics listening on http://%s:%d/metrics", self._httpd.server_address[0], self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
