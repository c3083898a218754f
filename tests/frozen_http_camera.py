"""A network camera on 127.0.0.1 that freezes, as an IP camera whose encoder hung looks to FFmpeg's http
protocol: `GET /stream` answers MPEG-TS at the recorded pace (tests/stream_sample.py) for `stall_after`
seconds of video, then nothing, the connection held open; every later connection is accepted, its request
read, and never answered.

    with FrozenHttpCamera(video, stall_after=4.5) as cam:
        ... source.kind url, source.path cam.url ...
        cam.frozen_for() > 1.0  # seconds since its last byte (None before the first)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent


class FrozenHttpCamera:
    def __init__(self, video: Path, stall_after: float):
        self.video = video
        self.stall_after = stall_after
        self.connections = 0
        self.last_write: float | None = None  # monotonic time of the last bytes sent
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with outer._lock:
                    outer.connections += 1
                    first = outer.connections == 1
                if not first:  # the camera hung: a connection is taken, nothing ever comes back
                    outer._released.wait()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "stream_sample.py"), str(outer.video),
                                         "--stall-after", str(outer.stall_after)], stdout=subprocess.PIPE)
                with outer._lock:
                    outer._procs.append(proc)
                assert proc.stdout is not None
                fd = proc.stdout.fileno()
                try:
                    while not outer._released.is_set():
                        data = os.read(fd, 65536)  # blocks for good once the stream stalls: the camera froze
                        if not data:
                            return
                        self.wfile.write(data)
                        self.wfile.flush()
                        outer.last_write = time.monotonic()
                except OSError:  # the agent went away
                    return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/stream"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def frozen_for(self) -> float | None:
        """Seconds since the last bytes went out (None before the first)."""
        last = self.last_write
        return None if last is None else time.monotonic() - last

    def __enter__(self) -> FrozenHttpCamera:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._released.set()
        with self._lock:
            for proc in self._procs:
                proc.kill()
                proc.wait()
        self._server.shutdown()
        self._server.server_close()
