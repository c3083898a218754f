"""The pipeline: the stages, wired together and nothing else.

    capture ──packets──> ring ──recordings──> clip ──> sink (spool or folder)
       └──packets──> decode ──newest gray frame──> detect ──opens/extends recordings in the ring

Four threads, one a stage, joined by bounded hand-offs. The capture thread never waits on a slow
stage when the source is live (decode drops to the next keyframe, the clip stage drops video
past its bound); fast replay waits instead, so it is deterministic and finds every label.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent import const
from edge_agent.capture.media import GrayFrame, Packet
from edge_agent.capture.source import AvSource
from edge_agent.capture.supervisor import CaptureStatus, CaptureSupervisor
from edge_agent.config import Config
from edge_agent.delivery.sinks import ClipSink
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import FrameSlot
from edge_agent.pipeline.clips import ClipStage, ClipStatus
from edge_agent.pipeline.decode import DecodeStage, DecodeStatus
from edge_agent.pipeline.detect import DetectStage, DetectStatus
from edge_agent.pipeline.events import Event
from edge_agent.pipeline.live import ReadTally
from edge_agent.pipeline.noreads import NoReads
from edge_agent.pipeline.ring import Recording, RingBuffer
from edge_agent.pipeline.track import SightingLog
from edge_agent.stage import Failure, FailureBox, StageThread


@dataclass(frozen=True)
class PipelineStatus:
    capture: CaptureStatus
    decode: DecodeStatus
    detect: DetectStatus
    clips: ClipStatus
    failure: Failure | None
    elapsed_s: float


class Pipeline:
    """Runs the stages for one config. `start()`, then `wait()` (replay: until the videos end and the
    clips are handed over) or `stop()` (shutdown: open recordings are cut short, not lost)."""

    def __init__(self, cfg: Config, sink: ClipSink, *, videos: Sequence[str] | None = None,
                 metrics: Metrics | None = None, on_event: Callable[[Event], None] | None = None,
                 on_noread: Callable[[Any], None] | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.failures = FailureBox()
        self.started_mono = time.monotonic()
        self.finished_mono: float | None = None
        # the last few events (status, the live view); the whole history is a listener's job (replay)
        self.recent: OrderedDict[str, Event] = OrderedDict()
        self.tally = ReadTally()  # reads and no-reads of the last hour: the live view's read rate
        self._open: dict[str, Event] = {}  # until the clip stage takes them
        self._events_lock = threading.Lock()
        self._source_pictures = False  # the source gives the detector's pictures itself (no decode)
        live = cfg.source.kind != "file" or cfg.source.realtime
        self.ring = RingBuffer(self._ring_keep_s(cfg), cfg.clip.ring_max_bytes, self._on_recording, self.metrics)
        self.track = SightingLog(self._track_keep_s(cfg))
        self.frames = FrameSlot(blocking=not live, metrics=self.metrics)
        self.decode = DecodeStage(self.frames, self.metrics, lambda: self.cfg.detector.rate_hz, live)
        self.detect = DetectStage(cfg, self.frames, self.ring, self.metrics, self._on_new_event, self._applied,
                                  NoReads(cfg, self.metrics, self._noread_listener(on_noread)), self.track)
        self.clips = ClipStage(cfg, sink, self.metrics, self._take_event, on_event, lambda: self.decode.live,
                               self.track)
        self.capture = CaptureSupervisor(cfg.source, self.metrics, self.failures, self._on_packet,
                                         self._on_session, videos or (),
                                         cooldown_s=lambda: self.cfg.detector.cooldown_s,
                                         encoders=lambda: self.cfg.clip.encoders)
        self.ready = self.capture.ready
        self._threads = [
            StageThread(self.capture, self.decode.end, self.failures),
            StageThread(self.decode, self.decode.finish, self.failures),
            StageThread(self.detect, self._detect_done, self.failures),
            StageThread(self.clips, None, self.failures),  # the sink is the end of the pipeline
        ]

    @staticmethod
    def _ring_keep_s(cfg: Config) -> float:
        return cfg.clip.pre_roll_s + cfg.clip.post_roll_s + const.RING_MARGIN_S

    @classmethod
    def _track_keep_s(cls, cfg: Config) -> float:
        """The longest clip, and room for the clip stage's backlog behind detection."""
        return cls._ring_keep_s(cfg) + cfg.clip.max_s + const.TRACK_MARGIN_S

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every stage has finished (file sources end); True if all did in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not any(t.alive for t in self._threads)
        if done and self.finished_mono is None:
            self.finished_mono = time.monotonic()
        return done

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop capture; the stages finish what they hold (open recordings are cut short, not lost): the
        clip stage makes clips until `timeout` less a reserve, then sends the rest without video."""
        self.clips.finish_by(time.monotonic() + max(0.0, timeout - const.CLIP_STOP_RESERVE_S))
        self.capture.stop()
        return self.wait(timeout)

    def reconfigure(self, new: Config) -> None:
        """Live reload from any thread: detector, event and clip settings apply at the next frame; a
        changed source restarts the source inside the process."""
        self.detect.reconfigure(new)
        if new.source != self.capture.cfg:
            self.capture.restart(new.source)

    @property
    def events_total(self) -> int:
        return self.detect.events

    def status(self) -> PipelineStatus:
        return PipelineStatus(self.capture.status(), self.decode.status(), self.detect.status(),
                              self.clips.status(), self.failures.failure,
                              (self.finished_mono or time.monotonic()) - self.started_mono)

    def mark_upload(self, event_id: str, _cid: str, result: str) -> None:
        """Uploader listener: the delivery state of a recent event."""
        with self._events_lock:
            ev = self.recent.get(event_id)
            if ev is not None:
                ev.record_upload(result)

    # --- hand-offs between stages (called from their threads) ---------------------------------

    def _on_packet(self, pkt: Packet | GrayFrame, live: bool) -> None:
        if live != self.decode.live:
            self.decode.set_live(live)
        if isinstance(pkt, GrayFrame):  # the camera's own picture (picamera2 lores): no decode
            self.decode.offer_picture(pkt)
            return
        self.ring.append(pkt)
        if not self._source_pictures:
            self.decode.offer(pkt)

    def _on_session(self, src: AvSource, n: int) -> None:
        self._source_pictures = src.gives_pictures  # capture thread, as _on_packet
        if n > 1:
            self.ring.reset()  # packets of the old session cannot mix with the new stream

    def _on_new_event(self, ev: Event) -> None:
        with self._events_lock:
            self.tally.read()
            self._open[ev.event_id] = ev
            self.recent[ev.event_id] = ev
            while len(self.recent) > const.RECENT_EVENTS:
                self.recent.popitem(last=False)

    def _noread_listener(self, then: Callable[[Any], None] | None) -> Callable[[Any], None]:
        def on_noread(nr: Any) -> None:
            self.tally.noread()
            if then is not None:
                then(nr)
        return on_noread

    def _take_event(self, event_id: str) -> Event | None:
        with self._events_lock:
            return self._open.pop(event_id, None)

    def _on_recording(self, rec: Recording) -> None:
        self.clips.offer(rec)

    def _applied(self, new: Config) -> None:
        """Detect thread, between two frames: the rest of the pipeline follows the new config."""
        self.clips.configure(new)
        self.ring.keep_s = self._ring_keep_s(new)
        self.track.keep_s = self._track_keep_s(new)
        self.cfg = new

    def _detect_done(self) -> None:
        stopping = self.capture.stopping
        self.detect.finish(flush_ring=not self.capture.status().live or stopping, stopping=stopping)
        self.clips.end()
