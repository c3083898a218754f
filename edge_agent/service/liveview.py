"""The technician's live view: the annotated picture, the figures and what became of recent labels.

One `LiveView` serves both the daemon (frames from the detect stage's viewer slot) and
`tune --web` (frames from tune's own reader). Pictures are rendered on the asking HTTP thread and
cached by frame, so any number of open pages cost one render per new frame, and none without a page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from edge_agent.config import Config
from edge_agent.delivery.cid import CidValidator
from edge_agent.inspection import Report, annotate, report_from
from edge_agent.pipeline.live import Thumbnails, ViewerSlot
from edge_agent.pipeline.noreads import NoReadStore

if TYPE_CHECKING:
    from edge_agent.delivery.spool import Spool
    from edge_agent.metrics import Metrics
    from edge_agent.pipeline.wiring import Pipeline

JPEG_QUALITY = 75
EVENTS_SHOWN = 20
NOREADS_SHOWN = 24
FIRST_FRAME_WAIT_S = 1.0


class LiveView:
    def __init__(self, cfg: Config, viewer: ViewerSlot, *, source: Callable[[], str],
                 decode_ms: Callable[[], float], status: Callable[[], dict[str, Any]] | None = None,
                 thumbs: Thumbnails | None = None, noreads: NoReadStore | None = None):
        self.cfg = cfg
        self.viewer = viewer
        self.validator = CidValidator(cfg.detector.cid_pattern, cfg.detector.cid_max_length)
        self._source = source
        self._decode_ms = decode_ms
        self._status = status or (lambda: {})
        self.thumbs = thumbs
        self.noreads = noreads
        self._render_lock = threading.Lock()
        self._seq = -1
        self._jpeg: bytes | None = None
        self._report: Report | None = None

    # --- the picture ------------------------------------------------------------------------------

    def frame_jpeg(self) -> bytes | None:
        """The newest annotated frame (None before the first); asking keeps the frames coming. The first
        viewer waits up to FIRST_FRAME_WAIT_S for the detect stage to start offering."""
        self.viewer.want()
        deadline = time.monotonic() + FIRST_FRAME_WAIT_S
        while self.viewer.latest()[1] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._render_lock:
            seq, item = self.viewer.latest()
            if item is not None and seq != self._seq:
                frame, result = item
                rep = report_from(frame.gray, result, self.validator, self._source(), frame.t, self._decode_ms())
                img = annotate(cv2.cvtColor(frame.gray, cv2.COLOR_GRAY2BGR), rep, self.cfg)
                ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if ok:
                    self._jpeg, self._report, self._seq = jpeg.tobytes(), rep, seq
            return self._jpeg

    # --- the figures ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        self.viewer.want()
        rep = self._report
        return {**self._status(), "view": rep.as_dict() if rep else None, "noreads": self.noread_list()}

    def noread_list(self) -> list[dict[str, Any]]:
        if self.noreads is None:
            return []
        out = []
        for e in reversed(self.noreads.entries()[-NOREADS_SHOWN:]):
            nid = Path(e.image).stem
            out.append({"id": nid, "at": e.at, "error": e.error, "sightings": e.sightings,
                        "image": f"/noreads/{nid}.jpg"})
        return out

    def noread_image(self, nid: str) -> bytes | None:
        """The JPEG of the listed no-read `nid`: looked up in the store's listing, never opened by a
        name taken from the request."""
        if self.noreads is None:
            return None
        for e in self.noreads.entries():
            if Path(e.image).stem == nid:
                try:
                    return Path(e.image).read_bytes()
                except OSError:
                    return None
        return None

    def thumbnail(self, event_id: str) -> bytes | None:
        return self.thumbs.get(event_id) if self.thumbs is not None else None


def event_state(ev: Any, quarantine_reason: str | None) -> dict[str, Any]:
    if ev.upload_result in ("delivered", "duplicate"):
        return {"state": "delivered", "reason": "already on the server" if ev.upload_result == "duplicate" else None}
    if ev.upload_result == "quarantined":
        return {"state": "quarantined", "reason": quarantine_reason}
    if ev.clip_error:
        return {"state": "failed", "reason": ev.clip_error}
    if ev.queued:
        return {"state": "queued", "reason": None}
    return {"state": "recording", "reason": None}


def daemon_view(cfg: Config, pipeline: Pipeline, spool: Spool, metrics: Metrics) -> LiveView:
    """The daemon's live view: frames from the detect stage, events, read rate, spool, no-reads."""

    def status() -> dict[str, Any]:
        st = pipeline.status()
        sp = spool.status()
        with pipeline._events_lock:
            recent = list(pipeline.recent.values())[-EVENTS_SHOWN:]
        thumbs = pipeline.detect.thumbs
        events = [{"cid": ev.cid, "event_id": ev.event_id, "detected_at": ev.detected_at,
                   "thumbnail": f"/thumbs/{ev.event_id}.jpg" if thumbs.get(ev.event_id) else None,
                   **event_state(ev, sp.quarantine_reason)} for ev in reversed(recent)]
        return {
            "mode": "daemon", "device_id": cfg.device_id,
            "source": {"describe": st.capture.describe, "live": st.capture.live, "fps": metrics.get("edge_agent_fps"),
                       "nominal_fps": st.capture.fps, "frames": st.capture.frames, "dropped": st.decode.dropped,
                       "error": st.capture.source_error},
            "reads": pipeline.tally.rates(),
            "events_total": pipeline.events_total,
            "events": events,
            "spool": asdict(sp),
        }

    return LiveView(cfg, pipeline.detect.viewer, source=lambda: pipeline.status().capture.describe or cfg.source.kind,
                    decode_ms=lambda: pipeline.detect.detector.last_ms, status=status,
                    thumbs=pipeline.detect.thumbs, noreads=pipeline.detect.noreads.store)
