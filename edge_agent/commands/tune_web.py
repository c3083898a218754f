"""`edge-agent tune --web`: the daemon's live view from the configured source, without the daemon.

For aiming and focusing before the service is installed: the same server and page as `run`, the
frames from tune's own reader, the daemon's detector and CID rule. Nothing is recorded, spooled or
sent. Frames are decoded continuously (a camera pipe must never back up) but analysed only while a
page watches, a few times a second; a file plays at its own pace, over and over.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np

from edge_agent import const
from edge_agent.config import Config

DEFAULT_PORT = 9108
ANALYSE_HZ = 5.0


def serve(cfg: Config, port: int | None) -> int:
    from edge_agent.app import Agent
    from edge_agent.capture.media import GrayFrame, luma
    from edge_agent.commands.frame_reader import open_reader
    from edge_agent.delivery.credentials import CredentialError
    from edge_agent.pipeline.view_feed import ViewerSlot
    from edge_agent.service.http import ExposureRefused, WebServer, access_for
    from edge_agent.service.liveview import LiveView

    http = cfg.http.model_copy(update={"port": port or cfg.http.port or DEFAULT_PORT})
    try:
        access = access_for(http)
    except (ExposureRefused, CredentialError) as exc:
        print(f"edge-agent tune: web server refused: {exc}", file=sys.stderr)
        return const.EXIT_CONFIG
    agent = Agent(cfg)
    detector = agent.detector()
    stop = threading.Event()
    reader = open_reader(agent, "tune", stop)
    viewer = ViewerSlot()
    counts: dict[str, Any] = {"frames": 0, "fps": None}

    def status() -> dict[str, Any]:
        return {"mode": "tune", "device_id": cfg.device_id,
                "source": {"describe": reader.src.describe, "camera": reader.camera, "fps": counts["fps"],
                           "frames": counts["frames"], "dropped": None, "error": None},
                "reads": None, "events": [], "spool": None}

    view = LiveView(cfg, viewer, source=lambda: reader.src.describe, detect_ms=lambda: detector.last_ms,
                    status=status)
    try:
        server = WebServer(None, http.host, http.port, view=view, access=access)
    except OSError as exc:
        reader.close()
        print(f"edge-agent tune: {exc} (another process on the port? try --port)", file=sys.stderr)
        return const.EXIT_CONFIG

    server.start()
    print(f"edge-agent tune: live view at {server.url}/ (Ctrl-C to stop)", flush=True)
    try:
        while not stop.is_set():
            n = _play(reader, detector, viewer, stop, counts, GrayFrame, luma)
            if stop.is_set() or reader.camera:
                break
            reader.close()  # a file: again from the start, so the picture stays on
            if n == 0:
                print(f"edge-agent tune: no frame could be decoded from {reader.src.describe}", file=sys.stderr)
                return const.EXIT_DATAERR
            reader = open_reader(agent, "tune", stop)
    finally:
        server.stop()
        reader.close()
    return 0


def _play(reader: Any, detector: Any, viewer: Any, stop: threading.Event, counts: dict[str, Any],
          gray_frame: Any, luma: Any) -> int:
    """Decode every frame (files at their own pace); analyse one every 1/ANALYSE_HZ s while watched."""
    n = 0
    started = time.monotonic()
    t0: float | None = None
    next_analysis = 0.0
    window_start, window_frames = time.monotonic(), 0
    for frame, t in reader.frames():
        if stop.is_set():
            break
        n += 1
        counts["frames"] += 1
        window_frames += 1
        now = time.monotonic()
        if now - window_start >= 1.0:
            counts["fps"] = round(window_frames / (now - window_start), 1)
            window_start, window_frames = now, 0
        if not reader.camera:  # a file: its own pace
            t0 = t if t0 is None else t0
            ahead = (t - t0) - (now - started)
            if ahead > 0:
                stop.wait(ahead)
        if viewer.wanted and now >= next_analysis:
            next_analysis = now + 1 / ANALYSE_HZ
            gf = gray_frame(np.ascontiguousarray(luma(frame)), t, time.time())
            viewer.offer(gf, detector.detect(gf))
    return n
