"""The detect stage: QR codes in the newest frame become CIDs, and CIDs become events.

Payloads are untrusted bytes: each goes through the one CID rule (`CidValidator.from_payload`);
a rejected one is counted and logged escaped, at most once per cooldown. A valid CID either opens
an event (and its recording in the ring) or is folded into the open one. A new event is a read: it
is committed to the spool (`commit`, one fsync) before the next frame is looked at, and only then
logged as detected, so a read the log shows survives a crash or a power cut before its clip is made.
A reloaded config is swapped in here, between two frames, so detector and event settings change at a
frame boundary.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent import const
from edge_agent.capture.media import GrayFrame
from edge_agent.config import Config
from edge_agent.config.live import PendingConfig
from edge_agent.delivery import contract
from edge_agent.delivery.cid import CidValidator, escape_payload
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import END, FrameSlot
from edge_agent.pipeline.events import Action, EventTracker, OpenEvent
from edge_agent.pipeline.noreads import NoReads
from edge_agent.pipeline.qr_detector import Detection, Detector
from edge_agent.pipeline.read_metadata import read_metadata
from edge_agent.pipeline.ring import RingBuffer
from edge_agent.pipeline.track import SightingLog
from edge_agent.pipeline.view_feed import Thumbnails, ViewerSlot

log = logging.getLogger("edge_agent.pipeline")

# Rejected payloads remembered for log throttling; forgotten all at once past this.
MAX_REJECTED_REMEMBERED = 1024

# Commits a read: (event id, CID, its metadata so far) -> whether it is durable (the sink's `detected`).
CommitRead = Callable[[str, str, dict], bool]


@dataclass(frozen=True)
class DetectStatus:
    decoder: str
    frames_analysed: int
    sightings: int  # frames x codes read as valid CIDs
    events: int
    rejected: int
    last_detect_ms: float
    config: Config | None = None  # the config the detect thread runs on (a reload's, once it took it)


class DetectStage:
    name = "detect"

    def __init__(self, cfg: Config, frames: FrameSlot, ring: RingBuffer, metrics: Metrics,
                 on_sighting: Callable[[Action, OpenEvent], None], noreads: NoReads, track: SightingLog,
                 commit: CommitRead):
        self.cfg = cfg
        self._commit = commit  # the spool keeps each read before the next frame is looked at
        self.frames = frames
        self.ring = ring
        self.metrics = metrics
        self._on_sighting = on_sighting  # the event log hears of every sighting folded into an event
        self.noreads = noreads  # located symbols nothing read: counted, kept as pictures
        self.track = track  # every analysed frame's reads and unread symbols: the clips' tracks
        self.detector = Detector(cfg.detector, const.THOROUGH_EVERY)
        self.validator = CidValidator(cfg.detector.cid_pattern, cfg.detector.cid_max_length)
        self.tracker = EventTracker(cfg.detector.cooldown_s, cfg.clip.pre_roll_s, cfg.clip.post_roll_s,
                                    cfg.clip.max_s, cfg.clip.extend_while_in_view)
        self._pending = PendingConfig()
        self._rejected_last: OrderedDict[bytes, float] = OrderedDict()
        self.analysed = self.sightings = self.events = self.rejected = 0
        self._read_at = 0.0  # monotonic: when the frame being handled was analysed
        self.viewer = ViewerSlot()  # the live view's frames: offered only while someone watches
        self.thumbs = Thumbnails()  # each recent event's first sighting, small

    @property
    def config(self) -> Config:
        return self.cfg

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """Live part (any thread): the new config applies before the next frame."""
        self._pending.offer(new, changed)

    def _swap_config(self) -> None:
        taken = self._pending.take()
        if taken is None:
            return
        new, _changed = taken
        old = self.cfg
        if new.detector != old.detector:
            try:
                self.detector = Detector(new.detector, const.THOROUGH_EVERY)
            except Exception as exc:  # a decoder that cannot load keeps the old one running
                log.error("reload: detector not changed: %s", exc)
                new = new.model_copy(update={"detector": old.detector})
            self.validator = CidValidator(new.detector.cid_pattern, new.detector.cid_max_length)
        self.tracker.configure(new.detector.cooldown_s, new.clip.pre_roll_s, new.clip.post_roll_s, new.clip.max_s,
                               new.clip.extend_while_in_view)
        self.noreads.configure(new)
        self.cfg = new
        log.info("config applied decoder=%s pre_roll_s=%g post_roll_s=%g", self.detector.name,
                 new.clip.pre_roll_s, new.clip.post_roll_s)

    def status(self) -> DetectStatus:
        return DetectStatus(self.detector.name, self.analysed, self.sightings, self.events, self.rejected,
                            round(self.detector.last_ms, 2), self.cfg)

    def run(self) -> None:
        while True:
            item = self.frames.get()
            if item is END:
                break
            self._swap_config()
            frame: GrayFrame = item
            try:
                found = self.detector.detect(frame)
            except Exception:  # one odd frame must not stop detection, nor hold back the clips it passed
                log.exception("QR decoder failed on a frame t=%.3f", frame.t)
                self.metrics.detector_errors.inc()
                self.ring.analysed(frame.t)
                continue
            self._read_at = time.monotonic()
            self.analysed += 1
            self.metrics.frames_analysed.inc()
            self.metrics.detect_seconds.observe(self.detector.last_ms / 1000)
            reads = [(self._handle(det, frame), det) for det in found]  # None: refused, outline kept
            self.track.frame(frame, reads, found.unread)
            self.ring.analysed(frame.t)  # the recordings detection has passed the end of can be made now
            self.noreads.observe(frame, found)
            self.viewer.offer(frame, found)

    def _handle(self, det: Detection, frame: GrayFrame) -> str | None:
        """The CID read (None: rejected), opening or folded into its event."""
        cid = self.validator.from_payload(det.payload)
        if cid is None:
            self._reject(det)
            return None
        self.sightings += 1
        self.metrics.detections.inc()
        action, ev = self.tracker.observe(cid, det)
        if action is Action.NEW:
            self.events += 1
            self.metrics.events.inc()
            durable = self._keep(ev)
            log.info("detected cid=%s clip=%s t=%.3f decoder=%s%s", cid, ev.event_id, det.t, det.decoder,
                     "" if durable else " not_durable")
            self.thumbs.add(ev.event_id, frame, det.polygon)
            self._on_sighting(action, ev)
            self.ring.start_recording(ev.event_id, ev.start_t, ev.end_t, at=det.t)
        elif action is Action.EXTEND:
            if not self.ring.extend(ev.event_id, ev.end_t):
                self.tracker.close(ev)  # already cut: later sightings are suppressed
            else:
                log.debug("extended cid=%s clip=%s end_t=%.3f", cid, ev.event_id, ev.end_t)
        if action is not Action.NEW:
            self._on_sighting(action, ev)
        return cid

    def _keep(self, ev: OpenEvent) -> bool:
        """Commit the read before anything else is done with it; how long that took from the frame's
        analysis is `edge_agent_read_durable_seconds` (an SD card's fsync is most of it)."""
        meta = read_metadata(self.cfg.device_id, ev.event_id, ev.cid, ev.first, ev.hits, ev.last_t,
                             contract.ClipInfo())
        durable = self._commit(ev.event_id, ev.cid, meta)
        if durable:
            self.metrics.read_durable_seconds.observe(time.monotonic() - self._read_at)
        return durable

    def _reject(self, det: Detection) -> None:
        self.rejected += 1
        self.metrics.payloads_rejected.inc()
        last = self._rejected_last.get(det.payload)
        if last is None or det.t - last > self.cfg.detector.cooldown_s:
            log.warning("payload rejected: not a valid CID payload=%s t=%.3f", escape_payload(det.payload), det.t)
        self._rejected_last[det.payload] = det.t
        if len(self._rejected_last) > MAX_REJECTED_REMEMBERED:
            self._rejected_last.clear()

    def finish(self) -> None:
        """No more frames: every detection has opened its recording (the wiring then ends the ring, which
        closes them)."""
        self.noreads.flush()

