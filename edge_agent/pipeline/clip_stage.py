"""The clip stage: a finished recording becomes a validated MP4 and its metadata, handed to the sink.

Recordings come from the ring through a `RecordingQueue` (pipeline/base.py), which bounds them in count
and bytes: fast replay (Backpressure.BLOCK) waits for room, so every clip is made; a camera (DROP) never
waits: past the bound a recording's video is let go, counted, and its CID still goes out with `clip.error`
saying why. No clip that fails is lost either: the event goes to the sink without video, with the reason
in its metadata. The ring hands a recording over once detection has analysed past its end, so its track is
whole when it comes: this stage waits on nobody.

A stop or a source restart hands every open recording over at once (the ring's flush). Their packets
are in memory already, so the bound does not drop them: the worker makes each, and a stop waits for it
(`finish_by`) until its deadline inside the stop budget. What is still waiting then goes out at once
without video, with `clip.error` saying the stop budget ran out, counted in edge_agent_clips_dropped_total
and logged one line each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent import const
from edge_agent.config import Config
from edge_agent.config.live import PendingConfig
from edge_agent.delivery import contract
from edge_agent.delivery.sinks import ClipSink
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import END, WAKE, Finished, RecordingQueue
from edge_agent.pipeline.clip_maker import ClipError, ClipMaker, EncoderStatus, OutOfTime
from edge_agent.pipeline.events import EventLog, EventSnapshot
from edge_agent.pipeline.read_metadata import read_metadata
from edge_agent.pipeline.track import SightingLog
from edge_agent.stage import Backpressure

log = logging.getLogger("edge_agent.pipeline")



@dataclass(frozen=True)
class ClipStatus:
    made: int
    failed: int
    dropped: int  # recordings let go because this stage fell behind a camera, or a stop ran out of time
    waiting: int
    encoders: tuple[EncoderStatus, ...]
    # why clips that need re-encoding go without video (every encoder failed the last); None: healthy
    encoding_error: str | None
    config: Config | None = None  # the config the clip thread makes clips with (a reload's, once it took it)


class ClipStage:
    name = "clip"

    def __init__(self, cfg: Config, sink: ClipSink, metrics: Metrics, events: EventLog,
                 on_event: Callable[[EventSnapshot], None] | None, backpressure: Callable[[], Backpressure],
                 track: SightingLog, recordings: RecordingQueue):
        self.cfg = cfg
        self.sink = sink
        self.metrics = metrics
        self.maker = ClipMaker(cfg.clip, metrics)
        self.metrics.clip_encoding_up.set(1)
        self.events = events  # read here, written here only through `clip_made`
        self._on_event = on_event
        self._backpressure = backpressure
        self.track = track
        self.recordings = recordings  # the hand-off from the ring: this stage gets from it, the ring puts
        self.made = self.failed = self.dropped = 0
        self._deadline: float | None = None  # monotonic; set by a stop
        self._pending = PendingConfig()

    @property
    def config(self) -> Config:
        return self.cfg

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """Live part (any thread): the next clip is made with `new` (encoders, size, quality, device_id)."""
        self._pending.offer(new, changed)
        self.recordings.wake()  # an idle worker takes it now, not at the next label

    def _swap_config(self) -> None:
        taken = self._pending.take()
        if taken is not None:
            self.cfg = taken[0]
            self.maker.configure(self.cfg.clip)

    def status(self) -> ClipStatus:
        maker = self.maker.status()
        return ClipStatus(self.made, self.failed, self.dropped + self.recordings.dropped, self.recordings.waiting,
                          maker.encoders, maker.encoding_error, self.cfg)

    def finish_by(self, deadline: float) -> None:
        """A stop: make the clips handed over until `deadline` (monotonic), then send the rest without
        video, so the stop ends within its budget and no CID is lost."""
        self._deadline = deadline

    def _hurry(self) -> str | None:
        """Clip worker's thread, while it makes a clip: why to copy the camera's H.264 rather than re-encode it
        now (a stop began, or a camera's reads pile up behind this clip), or None."""
        if self._deadline is not None:
            return "stopping"
        if self._backpressure() is Backpressure.DROP and self.recordings.waiting > const.CLIP_HURRY_BACKLOG:
            return "behind"
        return None

    def run(self) -> None:
        while True:
            rec = self.recordings.get()
            self._swap_config()
            if rec is END:
                break
            if rec is WAKE:
                continue
            try:
                self._make(rec)
            except Exception:  # one odd recording must not stop the others
                log.exception("clip worker failed clip=%s", rec.key)
            finally:
                self.recordings.done(rec)

    def _make(self, rec: Finished) -> None:
        ev = self.events.get(rec.key)
        if ev is None or ev.queued is not None:  # a recording is handed over once; this one was made
            return
        clip_ms: float | None = None
        part = self.sink.part_path(ev.event_id)
        started = time.perf_counter()
        video: Path | None
        span: tuple[float, float, float | None] = (rec.start_t, rec.end_t, None)  # the track's capture times
        try:
            if rec.dropped:
                raise ClipError(rec.dropped)
            if self._deadline is not None and time.monotonic() >= self._deadline:
                raise OutOfTime()
            result = self.maker.make(rec, part, self._deadline, self._hurry)
            clip_info, video = result.info, result.path
            span = (result.start_t, result.start_t + (clip_info.duration_s or 0.0), result.start_t)
            ms = (time.perf_counter() - started) * 1000
            clip_ms = round(ms, 1)
            self.made += 1
            self.metrics.clips.inc()
            self.metrics.clip_seconds.observe(ms / 1000)
            if clip_info.not_reencoded:
                self.metrics.clips_not_reencoded.labels(reason=clip_info.not_reencoded).inc()
            log.info("clip ready cid=%s clip=%s duration_s=%.2f frames=%s bytes=%s %s ms=%.0f%s", ev.cid,
                     ev.event_id, clip_info.duration_s or 0, clip_info.frames, clip_info.size_bytes,
                     ("remux" + (f" not_reencoded={clip_info.not_reencoded}" if clip_info.not_reencoded else ""))
                     if result.remuxed else f"encoder={result.encoder}", ms,
                     " pre_roll_short" if rec.truncated_start else "")
        except Exception as exc:  # the CID goes out whatever failed; an unexpected fault also with its traceback
            part.unlink(missing_ok=True)
            if isinstance(exc, OutOfTime):
                self.dropped += 1
                self.metrics.clips_dropped.inc()
            error = str(exc) if isinstance(exc, ClipError) else f"internal error: {type(exc).__name__}: {exc}"
            clip_info, video = contract.ClipInfo(error=error), None
            self.failed += 1
            self.metrics.clip_errors.inc()
            log.error("clip failed cid=%s clip=%s error=%s (sending the CID without video)", ev.cid,
                      ev.event_id, error, exc_info=not isinstance(exc, ClipError))
        self.metrics.clip_encoding_up.set(0 if self.maker.status().encoding_error else 1)
        ev = self.events.get(ev.event_id) or ev  # the sightings counted while the clip was made
        try:
            track, frames, quality = self.track.track(ev.cid, ev.first, *span)
            meta = read_metadata(self.cfg.device_id, ev.event_id, ev.cid, ev.first, ev.hits, ev.last_t, clip_info,
                                 track, quality, frames)
        except Exception:  # a bug in the extras: the read and its clip go out without them, never held back
            log.exception("clip track failed cid=%s clip=%s (sending the clip without its track)", ev.cid,
                          ev.event_id)
            meta = read_metadata(self.cfg.device_id, ev.event_id, ev.cid, ev.first, ev.hits, ev.last_t, clip_info)
        stored = self.sink.put(ev.event_id, ev.cid, meta, video)
        if not stored.kept:
            log.error("clip refused by the spool cid=%s clip=%s", ev.cid, ev.event_id)
        error = clip_info.error
        if stored.video_error is not None:
            error, meta = stored.video_error, {**meta, "clip": contract.ClipInfo(error=stored.video_error)
                                               .model_dump(mode="json", exclude_none=True)}
        made = self.events.clip_made(ev.event_id, meta["clip"], error=error, ms=clip_ms, queued=stored.kept)
        if self._on_event is not None and made is not None:
            self._on_event(made)
