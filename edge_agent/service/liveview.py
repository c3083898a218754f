"""The technician's live view: the annotated picture, the figures and what became of recent labels.

One `LiveView` serves both the daemon (frames from the detect stage's viewer slot) and
`tune --web` (frames from tune's own reader). Pictures are rendered by one `live-render` thread,
started by the first viewer and ending a few seconds after the last, never by the viewers' HTTP
threads: each frame is annotated and encoded once, and every viewer sends the same bytes (the
JPEG, and for MJPEG the same multipart part), so a viewer costs its thread and its socket, not a
copy of the picture. Rendering on one thread also keeps the large working images (a 720p BGR frame
is 2.7 MB) in one allocator arena instead of one per viewer thread, which is what made memory grow
with viewers and stay grown after they left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from edge_agent.config import Config
from edge_agent.delivery.cid import CidValidator
from edge_agent.inspection import Report, annotate, report_from
from edge_agent.pipeline.events import Delivery, EventSnapshot
from edge_agent.pipeline.noreads import NoReadStore
from edge_agent.pipeline.view_feed import Thumbnails, ViewerSlot
from edge_agent.thread_names import name_os_thread

if TYPE_CHECKING:
    from edge_agent.delivery.spool import Spool
    from edge_agent.pipeline.wiring import ViewFeed

JPEG_QUALITY = 75
EVENTS_SHOWN = 20
NOREADS_SHOWN = 24
FIRST_FRAME_WAIT_S = 1.0
# then, the first picture's rendering (annotate and encode: well under a second even on a busy Pi)
FIRST_RENDER_WAIT_S = 5.0
# how often the render thread looks for a new frame: the page asks every 300 ms, MJPEG sends at 4 fps
RENDER_INTERVAL_S = 0.1


@dataclass(frozen=True)
class ViewRules:
    """What a picture is annotated by: the config (its ROI, its device) and the CID rule built from it,
    replaced together by a reload so a picture never mixes the old rule with the new ROI."""

    cfg: Config
    validator: CidValidator

    @classmethod
    def of(cls, cfg: Config) -> ViewRules:
        return cls(cfg, CidValidator(cfg.detector.cid_pattern, cfg.detector.cid_max_length))


@dataclass(frozen=True)
class Rendered:
    """One annotated frame, shared read-only by every viewer."""

    seq: int
    jpeg: bytes
    part: bytes  # the same JPEG as one part of a multipart/x-mixed-replace stream
    report: Report


# the parts of a multipart/x-mixed-replace stream of JPEGs (the web server's /stream.mjpg) are made here once
MJPEG_BOUNDARY = "edgeagentframe"


def mjpeg_part(jpeg: bytes) -> bytes:
    return (f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            + jpeg + b"\r\n")


class LiveView:
    def __init__(self, cfg: Config, viewer: ViewerSlot, *, source: Callable[[], str],
                 detect_ms: Callable[[], float], status: Callable[[], dict[str, Any]] | None = None,
                 thumbs: Thumbnails | None = None, noreads: NoReadStore | None = None,
                 watch: Callable[[bool], None] = lambda _on: None):
        """`watch(True)` when the first viewer comes, `watch(False)` when the last has gone (the daemon's
        decode stage then decodes every frame)."""
        self._rules = ViewRules.of(cfg)
        self.viewer = viewer
        self._watch = watch
        self._source = source
        self._detect_ms = detect_ms
        self._status = status or (lambda: {})
        self.thumbs = thumbs
        self.noreads = noreads
        self._cond = threading.Condition()
        self._shown: Rendered | None = None
        self._renderer: threading.Thread | None = None
        self._closed = threading.Event()

    # --- live config ------------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._rules.cfg

    @property
    def validator(self) -> CidValidator:
        return self._rules.validator

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """Live part (any thread): the next picture is annotated with the new CID rule and ROI. The rules
        are one immutable pair swapped whole, so the render thread needs no hand-over."""
        self._rules = ViewRules.of(new)

    # --- the picture ------------------------------------------------------------------------------

    def frame_jpeg(self) -> bytes | None:
        """The newest annotated frame (None before the first); asking keeps the frames coming. The first
        viewer waits up to FIRST_FRAME_WAIT_S for the first picture."""
        shown = self.next_frame(-1, FIRST_FRAME_WAIT_S)
        return shown.jpeg if shown is not None else None

    def next_frame(self, after_seq: int, timeout_s: float) -> Rendered | None:
        """The newest rendered frame once it is another than `after_seq` (-1: any), waiting up to
        `timeout_s`; else the one there is (None before the first)."""
        self.viewer.want()
        self._start_renderer()
        deadline = time.monotonic() + timeout_s
        first = self._shown is None
        with self._cond:
            while self._shown is None or self._shown.seq == after_seq:
                left = deadline - time.monotonic()
                if left <= 0 and first and self._shown is None and self.viewer.latest()[1] is not None:
                    # the first frame came and is being rendered: worth waiting for, once
                    first, deadline = False, deadline + FIRST_RENDER_WAIT_S
                    continue
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._shown

    def close(self) -> None:
        """No more pictures: the render thread ends and is joined, so it is never inside OpenCV while
        the interpreter shuts down (a daemon thread there aborts the process)."""
        self._closed.set()
        with self._cond:
            thread = self._renderer
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _start_renderer(self) -> None:
        with self._cond:
            if self._renderer is None and not self._closed.is_set():
                self._watch(True)
                self._renderer = threading.Thread(target=self._render_loop, name="live-render", daemon=True)
                self._renderer.start()

    def _render_loop(self) -> None:
        """Render each new frame the slot offers while anyone watches, then end (no thread without a
        viewer); a viewer arriving as it ends is seen under the lock, so the thread stays."""
        name_os_thread("live-render")
        try:
            while True:
                if self._closed.is_set() or not self.viewer.wanted:
                    with self._cond:
                        if self._closed.is_set() or not self.viewer.wanted:
                            self._renderer = None
                            self._watch(False)
                            return
                seq, item = self.viewer.latest()
                shown = self._shown
                if item is not None and (shown is None or seq != shown.seq):
                    rendered = self._render(seq, item)
                    if rendered is not None:
                        with self._cond:
                            self._shown = rendered
                            self._cond.notify_all()
                time.sleep(RENDER_INTERVAL_S)
        finally:
            with self._cond:  # ended by an error too: the next viewer starts another
                if self._renderer is threading.current_thread():
                    self._renderer = None
                    self._watch(False)

    def _render(self, seq: int, item: tuple[Any, Any]) -> Rendered | None:
        frame, result = item
        rules = self._rules  # one picture, one set of rules
        rep = report_from(frame.gray, result, rules.validator, self._source(), frame.t, self._detect_ms())
        img = annotate(cv2.cvtColor(frame.gray, cv2.COLOR_GRAY2BGR), rep, rules.cfg)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:  # a picture the encoder refuses: the viewers keep the last one
            return None
        jpeg = buf.tobytes()
        return Rendered(seq, jpeg, mjpeg_part(jpeg), rep)

    # --- the figures ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        self.viewer.want()
        shown = self._shown
        rep = shown.report if shown is not None else None
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


def event_state(ev: EventSnapshot, quarantine_reason: str | None) -> dict[str, Any]:
    """The page's state of an event: the server's answer first, then whether its clip failed."""
    state = ev.delivery
    if state is Delivery.DELIVERED:
        return {"state": "delivered", "reason": None}
    if state is Delivery.DUPLICATE:
        return {"state": "delivered", "reason": "already on the server"}
    if state is Delivery.QUARANTINED:
        return {"state": "quarantined", "reason": quarantine_reason}
    if ev.clip_error:
        return {"state": "failed", "reason": ev.clip_error}
    if state is Delivery.REFUSED:
        return {"state": "failed", "reason": "not kept by the spool"}
    return {"state": state.value, "reason": None}


def daemon_view(cfg: Config, feed: ViewFeed, spool: Spool, fps: Callable[[], float]) -> LiveView:
    """The daemon's live view: frames from the detect stage, events, read rate, spool, no-reads, all from
    the pipeline's feed; `fps` the frame rate the daemon measured over its last tick."""

    def status() -> dict[str, Any]:
        st = feed.status()
        sp = spool.status()
        recent = feed.events()[-EVENTS_SHOWN:]
        events = [{"cid": ev.cid, "event_id": ev.event_id, "detected_at": ev.detected_at,
                   "thumbnail": f"/thumbs/{ev.event_id}.jpg" if feed.thumbs.get(ev.event_id) else None,
                   **event_state(ev, sp.quarantine_reason)} for ev in reversed(recent)]
        return {
            "mode": "daemon", "device_id": view.config.device_id,
            "source": {"describe": st.capture.describe, "camera": st.capture.camera, "fps": fps(),
                       "nominal_fps": st.capture.fps, "frames": st.capture.frames, "dropped": st.decode.dropped,
                       "error": st.capture.source_error},
            "reads": feed.tally.rates(),
            "events_total": st.detect.events,
            "events": events,
            "spool": asdict(sp),
        }

    def source() -> str:
        st = feed.status().capture
        return st.describe or (st.config.source.kind if st.config is not None else cfg.source.kind)

    view = LiveView(cfg, feed.viewer, source=source, detect_ms=lambda: feed.status().detect.last_detect_ms,
                    status=status, thumbs=feed.thumbs, noreads=feed.noreads, watch=feed.watch)
    return view
