"""The pipeline: the stages, wired together and nothing else.

    capture ──packets──> ring ──recordings──> clip ──> sink (spool or folder)
       └──packets──> decode ──newest gray frame──> detect ──opens/extends recordings in the ring

Four threads, one a stage, joined by bounded hand-offs. One back-pressure setting, decided here from
the source (`backpressure_for`), tells every bounded hand-off what to do when its reader is behind:
with a camera (DROP) the capture thread never waits on a slow stage (decode drops to the next
keyframe, the detect hand-off keeps the newest frame, the clip stage drops video past its bound);
fast replay (BLOCK) waits instead, so it is deterministic and finds every label.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent import const
from edge_agent.capture.consumer import Route
from edge_agent.capture.session import Session
from edge_agent.capture.supervisor import CaptureStatus, CaptureSupervisor
from edge_agent.config import Config, SourceConfig
from edge_agent.config.live import LivePart
from edge_agent.delivery.sinks import ClipSink
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import FrameSlot, RecordingQueue
from edge_agent.pipeline.clip_stage import ClipStage, ClipStatus
from edge_agent.pipeline.decode import DecodeStage, DecodeStatus
from edge_agent.pipeline.detect_stage import DetectStage, DetectStatus
from edge_agent.pipeline.events import Action, EventLog, EventSnapshot, OpenEvent
from edge_agent.pipeline.noreads import NoReads, NoReadStore
from edge_agent.pipeline.ring import RingBuffer, RingStatus
from edge_agent.pipeline.track import SightingLog
from edge_agent.pipeline.view_feed import ReadTally, Thumbnails, ViewerSlot
from edge_agent.stage import Backpressure, Failure, FailureBox, StageThread

log = logging.getLogger("edge_agent.pipeline")


def backpressure_for(source: SourceConfig) -> Backpressure:
    """A camera gives frames at its own pace whether or not anyone is ready, and so does a file played at
    its recorded pace (`realtime`, as a camera would give it): DROP. A file read as fast as it decodes:
    BLOCK, nothing dropped."""
    return Backpressure.DROP if source.kind != "file" or source.realtime else Backpressure.BLOCK


class Retention:
    """How much recent video the ring keeps and how long the sightings are remembered: both follow
    the rolls (clip.pre_roll_s, clip.post_roll_s, clip.max_s)."""

    def __init__(self, cfg: Config, ring: RingBuffer, track: SightingLog):
        self.config = cfg
        self._ring = ring
        self._track = track

    @staticmethod
    def ring_keep_s(cfg: Config) -> float:
        return cfg.clip.pre_roll_s + cfg.clip.post_roll_s + const.RING_MARGIN_S

    @classmethod
    def track_keep_s(cls, cfg: Config) -> float:
        """The longest clip, and room for the clip stage's backlog behind detection."""
        return cls.ring_keep_s(cfg) + cfg.clip.max_s + const.TRACK_MARGIN_S

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """Live part: both apply from the next packet and frame (each under its own lock)."""
        self._ring.retain(self.ring_keep_s(new))
        self._track.retain(self.track_keep_s(new))
        self.config = new


@dataclass(frozen=True)
class ViewFeed:
    """What the live view takes from a running pipeline, and the one thing it tells it: that someone is
    looking (`watch`), when the decode stage decodes every frame (a picture that stops for half of each
    second is no view to aim by)."""

    viewer: ViewerSlot  # the newest analysed frame and what was found in it, while someone looks
    thumbs: Thumbnails  # each recent event's first sighting
    noreads: NoReadStore  # located codes nothing read, with their pictures
    tally: ReadTally  # reads and no-reads of the last hour
    status: Callable[[], PipelineStatus]
    events: Callable[[], list[EventSnapshot]]  # the recent events, oldest first
    watch: Callable[[bool], None]


@dataclass(frozen=True)
class PipelineStatus:
    capture: CaptureStatus
    ring: RingStatus
    decode: DecodeStatus
    detect: DetectStatus
    clips: ClipStatus
    failure: Failure | None
    elapsed_s: float


class Pipeline:
    """Runs the stages for one config. `start()`, then `wait()` (replay: until the videos end and the
    clips are handed over) or `stop()` (shutdown: open recordings are cut short, not lost)."""

    def __init__(self, cfg: Config, sink: ClipSink, *, videos: Sequence[str] | None = None,
                 metrics: Metrics | None = None, on_event: Callable[[EventSnapshot], None] | None = None,
                 on_noread: Callable[[Any], None] | None = None, events: EventLog | None = None):
        self.metrics = metrics or Metrics()
        self.failures = FailureBox()
        self.started_mono = time.monotonic()
        self.finished_mono: float | None = None
        # every event from its sighting to its delivery; by default the last few (status, the live view),
        # replay passes one that keeps the whole run
        self.events = events if events is not None else EventLog(keep=const.RECENT_EVENTS)
        self.tally = ReadTally()  # reads and no-reads of the last hour: the live view's read rate
        # decided here and only here; a reload that reopens the source as another kind decides it again,
        # before that session's first packet (`_on_session`, on the capture thread, the only writer)
        self._backpressure = backpressure_for(cfg.source)
        # finished recordings, from the ring to the clip stage
        self.recordings = RecordingQueue(self.backpressure, self.metrics)
        self.ring = RingBuffer(Retention.ring_keep_s(cfg), cfg.clip.ring_max_bytes, self.recordings.put,
                               self.metrics)
        self.track = SightingLog(Retention.track_keep_s(cfg))
        self.frames = FrameSlot(self.backpressure, metrics=self.metrics)
        self.retention = Retention(cfg, self.ring, self.track)
        self.decode = DecodeStage(self.frames, self.metrics, self.backpressure, cfg)
        self.noreads = NoReads(cfg, self.metrics, self._noread_listener(on_noread))
        self.detect = DetectStage(cfg, self.frames, self.ring, self.metrics, self._on_sighting, self.noreads,
                                  self.track, sink.detected)
        self.clips = ClipStage(cfg, sink, self.metrics, self.events, on_event, self.backpressure, self.track,
                               self.recordings)
        self.capture = CaptureSupervisor(cfg, self.metrics, self.failures, self._on_session, videos or ())
        self.ready = self.capture.ready
        self._capture_ended = False  # its consumers were told: by its thread, or by a stop without it
        self._end_lock = threading.Lock()
        self._capture_let_go = False
        self._threads = [
            StageThread(self.capture, self._end_capture, self.failures),  # the ring ends after detection
            StageThread(self.decode, self.decode.finish, self.failures),
            StageThread(self.detect, self._detect_done, self.failures),
            StageThread(self.clips, self.recordings.close, self.failures),  # the sink is the end of the pipeline
        ]

    def live_parts(self) -> list[tuple[str, tuple[str, ...], LivePart]]:
        """The stages that follow live config changes, and the keys each uses (for `Agent.take_live`).
        Threaded stages take a change at their loop boundary; none writes another's fields."""
        rolls = ("clip.pre_roll_s", "clip.post_roll_s", "clip.max_s")
        return [
            ("capture", ("source", "detector.cooldown_s", "clip.encoders"), self.capture),
            ("decode", ("detector.rate_hz", "detector.max_blind_s"), self.decode),
            ("detect", ("detector", *rolls, "clip.extend_while_in_view", "noreads"), self.detect),
            ("ring", rolls, self.retention),
            ("clip", ("device_id", "clip"), self.clips),
        ]

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every stage has finished (file sources end); True if all did in time. A capture thread a
        stop let go is not waited for (`stop`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = self._threads[1:] if self._capture_let_go else self._threads
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not any(t.alive for t in threads)
        if done and self.finished_mono is None:
            self.finished_mono = time.monotonic()
        return done

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop capture; the stages finish what they hold (open recordings are cut short, not lost): the
        clip stage makes clips until `timeout` less a reserve, then sends the rest without video.

        Capture ends at once where its source can be interrupted. One blocked in FFmpeg's own network read
        (PyAV offers only its timeout, up to source.open_timeout_s) is let go after CAPTURE_STOP_GRACE_S:
        it hands nothing on any more, its consumers are ended here, and the open recordings reach the clip
        stage within the budget all the same; the read ends by itself on a daemon thread. Once the stages are
        done, a capture let go while closing a camera command that ignores SIGTERM is given the moment it
        needs to kill it (const.COMMAND_STOP_S), so no camera process outlives the agent."""
        deadline = time.monotonic() + timeout
        self.clips.finish_by(deadline - const.CLIP_STOP_RESERVE_S)
        self.capture.stop()
        capture = self._threads[0]
        if not capture.join(min(const.CAPTURE_STOP_GRACE_S, timeout)) and \
                self.capture.let_go(max(0.0, deadline - time.monotonic())):
            self._capture_let_go = True
            st = self.capture.status()
            why = {"reading": "a network read ends only at its timeout", "opening": "a network open ends only at "
                   "its timeout", "closing": "the camera command has not exited"}.get(st.doing, "")
            log.warning("capture still %s %.1f s into the stop (%s) source=%s: let go, its open recordings are cut "
                        "short without it", st.doing, const.CAPTURE_STOP_GRACE_S, why, st.describe or "-")
            self._end_capture()
        done = self.wait(max(0.0, deadline - time.monotonic()))
        if self._capture_let_go:  # one closing a camera command that ignored SIGTERM kills it by then
            capture.join(min(const.COMMAND_STOP_S + 1.0, max(0.0, deadline - time.monotonic())))
        return done

    @property
    def drained(self) -> bool:
        """Every stage after capture has finished: each recording was handed to the sink (a stop that
        leaves this False lost what the stages still held)."""
        return not any(t.alive for t in self._threads[1:])

    def _end_capture(self) -> None:
        """No more packets: the decode stage ends (then detection, then the ring). Once, whether the capture
        thread ends or a stop lets it go."""
        with self._end_lock:
            if self._capture_ended:
                return
            self._capture_ended = True
        self.decode.end()

    @property
    def events_total(self) -> int:
        return self.detect.events

    def view_feed(self) -> ViewFeed:
        """The narrow feed the live view reads (and the decode stage's watched flag it sets)."""
        return ViewFeed(self.detect.viewer, self.detect.thumbs, self.noreads.store, self.tally, self.status,
                        self.events.snapshot, self.decode.watch)

    def status(self) -> PipelineStatus:
        return PipelineStatus(self.capture.status(), self.ring.status(), self.decode.status(), self.detect.status(),
                              self.clips.status(), self.failures.failure,
                              (self.finished_mono or time.monotonic()) - self.started_mono)

    def backpressure(self) -> Backpressure:
        """What every bounded hand-off does when its reader is behind (any thread)."""
        return self._backpressure

    # --- hand-offs between stages (called from their threads) ---------------------------------

    def _on_session(self, src: Session, n: int) -> Route:
        """Capture thread, as a session opens: where its packets go. A camera that gives the detector's
        pictures itself (picamera2's lores) has nothing decoded: its packets go to the ring only."""
        self._backpressure = backpressure_for(src.cfg)
        if n > 1:  # packets of the old session cannot mix with the new stream; a replay's next file: its end
            self.ring.reset("end_of_video" if src.cfg.kind == "file" else "source_restart")
        ended = self._camera_session_ended if src.camera else None
        if src.gives_pictures:
            return Route(packets=(self.ring,), pictures=self.decode, ended=ended)
        return Route(packets=(self.ring, self.decode), ended=ended)

    def _camera_session_ended(self) -> None:
        """Capture thread, as a camera's session ends other than by a stop (it stalled, failed or ended; it
        may stay away for long): the decoder gives up the pictures it holds, with their capture times, and
        every open recording is finished with what it has (cut short, "source_restart") and goes to the clip
        stage now, rather than when the camera is back or the agent stops."""
        self.decode.session_ended()
        # a new ring session now: reads of the ended one still in detection are finished at once, from its
        # own packets (the next session's reset finds this one empty and drops it)
        self.ring.reset("source_restart")

    def _on_sighting(self, action: Action, ev: OpenEvent) -> None:
        """Detect thread: a CID opened an event or was folded into one."""
        if action is Action.NEW:
            self.tally.read()
            self.events.opened(ev)
        else:
            self.events.sighted(ev)

    def _noread_listener(self, then: Callable[[Any], None] | None) -> Callable[[Any], None]:
        def on_noread(nr: Any) -> None:
            self.tally.noread()
            if then is not None:
                then(nr)
        return on_noread

    def _detect_done(self) -> None:
        """The detect thread's last act: no recording will be opened any more, so the ring ends (every open
        recording is finished with what it has, marked cut short by the stop or by the end of the video)."""
        self.frames.close()  # a decode thread offering frames never waits for detection again
        self.detect.finish()
        self.ring.end("shutdown" if self.capture.stopping else "end_of_video")
        self.recordings.end()
