"""The one module that wires the stages together (DESIGN.md section 2):

    capture ──packets──> RingBuffer
       └──packets──> decode ──newest gray frame──> detect ──events──> ring recordings
                                                         recordings ──> clip worker ──> sink (spool)

Four threads, each owning its stage, joined by bounded queues:
- capture: reads the source, appends to the ring, offers packets to the decoder. It never
  waits on anything slow: live sources drop to the decoder (counted) rather than block;
  only fast file replay blocks, so replay is deterministic and finds every label.
- decode: decodes every packet (H.264 needs its references) but converts to gray only the
  frames the detection rate asks for; intra-only codecs (MJPEG, raw) skip decoding the rest.
- detect: runs the QR decoder on the newest frame, validates payloads, turns sightings into
  events and opens/extends recordings in the ring.
- clip worker: cuts, encodes, validates and hands clips to the sink.
Upload is the uploader's own thread, fed by the spool.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from edge_agent import __version__, const
from edge_agent.capture.media import GrayFrame, Packet, StreamInfo, luma, to_av_packet
from edge_agent.capture.source import AvSource, SourceError
from edge_agent.config import Config
from edge_agent.delivery import contract
from edge_agent.delivery.cid import CidValidator, escape_payload
from edge_agent.delivery.sinks import ClipSink
from edge_agent.metrics import Metrics
from edge_agent.pipeline.clip import ClipError, ClipMaker
from edge_agent.pipeline.detector import Detection, Detector
from edge_agent.pipeline.events import Action, Event, EventTracker
from edge_agent.pipeline.ring import Recording, RingBuffer

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker passed down the queues
# Codecs whose every packet decodes on its own: frames the detector does not want are not decoded.
_INTRA_ONLY = frozenset({"mjpeg", "rawvideo", "png", "bmp", "ljpeg"})
# Fast replay: how far decode may run ahead of detection, in packets (~1 s at 30 fps).
_REPLAY_QUEUE = 32
# Live: packets buffered for the decoder before capture starts dropping to it (~2 s at 30 fps).
_LIVE_QUEUE = 64


@dataclass
class EventRecord:
    """What happened to one event, for the replay report and `on_event` listeners."""

    event_id: str
    cid: str
    detected_at: str
    detected_t: float
    clip: dict[str, Any] | None = None
    clip_error: str | None = None
    clip_ms: float | None = None  # cut + remux/encode + validate
    queued: bool = False
    uploaded: bool = False
    upload_result: str | None = None


@dataclass
class Stats:
    started_mono: float = field(default_factory=time.monotonic)
    finished_mono: float | None = None
    last_frame_mono: float | None = None
    source_live: bool = False

    @property
    def elapsed_s(self) -> float:
        return (self.finished_mono or time.monotonic()) - self.started_mono


class FrameSlot:
    """Hand-off from decode to detect. Live: holds only the newest frame (older ones are
    counted as skipped, the detector never works on stale video). Fast replay: a short
    blocking queue, so every frame the rate asks for is analysed."""

    def __init__(self, blocking: bool, metrics: Metrics):
        self.blocking = blocking
        self._metrics = metrics
        self._cond = threading.Condition()
        self._items: list[Any] = []

    def put(self, item: Any) -> None:
        with self._cond:
            if self.blocking:
                while len(self._items) >= 2:
                    self._cond.wait()
            elif item is not _END:
                stale = [x for x in self._items if x is not _END]
                if stale:
                    self._metrics.inc("edge_agent_frames_skipped_total", len(stale))
                self._items = [x for x in self._items if x is _END]
            self._items.append(item)
            self._cond.notify_all()

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.pop(0)
            self._cond.notify_all()
            return item


class Pipeline:
    """Runs the stages for one config. `start()` then either `wait()` (replay: until the
    videos end and clips are handed over) or `stop()` (daemon shutdown)."""

    def __init__(
        self,
        cfg: Config,
        sink: ClipSink,
        *,
        videos: Sequence[str] | None = None,
        metrics: Metrics | None = None,
        on_event: Callable[[EventRecord], None] | None = None,
    ):
        self.cfg = cfg
        self.sink = sink
        self.videos = list(videos or [])
        self.metrics = metrics or Metrics()
        self.on_event = on_event
        self.stats = Stats(source_live=cfg.source.kind != "file")
        # the last few events (the live view wants them); a full history is the replay report's job, as
        # a listener: a daemon that ran for months must not keep every event it ever saw
        self.recent: OrderedDict[str, EventRecord] = OrderedDict()
        self.events_total = 0
        self._events_lock = threading.Lock()
        self._stop = threading.Event()
        self._restart_source = threading.Event()
        self._source: AvSource | None = None
        self._source_cfg = cfg.source  # swapped by reconfigure() before the source restarts
        self._source_lock = threading.Lock()
        self.source_error: str | None = None
        self.ready = threading.Event()  # the source has delivered a frame

        live_or_paced = cfg.source.kind != "file" or cfg.source.realtime
        self._live_queues = live_or_paced
        self._packets_q: queue.Queue[Any] = queue.Queue(_LIVE_QUEUE if live_or_paced else _REPLAY_QUEUE)
        self._frames = FrameSlot(blocking=not live_or_paced, metrics=self.metrics)
        self._clips_q: queue.Queue[Any] = queue.Queue()
        # recordings handed to the clip worker and not yet cut, in bytes: bounded so a worker that falls
        # behind (slow encoding, a slow disk) cannot grow memory without end
        self._backlog = threading.Condition()
        self._backlog_bytes = 0
        self._backlog_count = 0

        self.ring = RingBuffer(self._ring_keep_s(cfg), cfg.clip.ring_max_bytes, self._on_recording, self.metrics)
        self.detector = Detector(cfg.detector)
        self.validator = CidValidator(cfg.detector.cid_pattern, cfg.detector.cid_max_length)
        self.tracker = EventTracker(cfg.detector.cooldown_s, cfg.clip.pre_roll_s, cfg.clip.post_roll_s,
                                    cfg.clip.max_s, cfg.clip.extend_while_in_view)
        self.clip_maker = ClipMaker(cfg.clip)
        self._open_events: dict[str, tuple[Event, EventRecord]] = {}  # event_id -> event, until its clip is cut
        self._pending_cfg: Config | None = None
        self._cfg_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @staticmethod
    def _ring_keep_s(cfg: Config) -> float:
        return cfg.clip.pre_roll_s + cfg.clip.post_roll_s + const.RING_MARGIN_S

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("capture", self._capture_loop), ("decode", self._decode_loop),
                             ("detect", self._detect_loop), ("clip", self._clip_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def wait(self, timeout: float | None = None) -> bool:
        """Until every stage has finished (file sources end); True if all did in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not any(t.is_alive() for t in self._threads)
        if done and self.stats.finished_mono is None:
            self.stats.finished_mono = time.monotonic()
        return done

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop capture, let queued work finish (open recordings are cut short, not lost)."""
        self._stop.set()
        with self._source_lock:
            if self._source is not None:
                self._source.interrupt()
        return self.wait(timeout)

    def reconfigure(self, new: Config) -> None:
        """Live reload. Detector, event and clip settings apply at the next frame; a changed
        source restarts the source inside the process. Called from any thread."""
        with self._cfg_lock:
            self._pending_cfg = new
        if new.source != self._source_cfg:
            self._source_cfg = new.source
            self._restart_source.set()
            with self._source_lock:
                if self._source is not None:
                    self._source.interrupt()

    def _apply_pending(self) -> None:
        """Detector thread: swap in a reloaded config between two frames."""
        with self._cfg_lock:
            new, self._pending_cfg = self._pending_cfg, None
        if new is None:
            return
        old = self.cfg
        if new.detector != old.detector:
            try:
                self.detector = Detector(new.detector)
            except Exception as exc:  # a decoder that cannot load keeps the old one running
                log.error("reload: detector not changed: %s", exc)
                new = new.model_copy(update={"detector": old.detector})
            self.validator = CidValidator(new.detector.cid_pattern, new.detector.cid_max_length)
        self.tracker.configure(new.detector.cooldown_s, new.clip.pre_roll_s, new.clip.post_roll_s, new.clip.max_s,
                               new.clip.extend_while_in_view)
        self.clip_maker.cfg = new.clip
        self.ring.keep_s = self._ring_keep_s(new)
        self.cfg = new
        log.info("config applied decoder=%s pre_roll_s=%g post_roll_s=%g", self.detector.name,
                 new.clip.pre_roll_s, new.clip.post_roll_s)

    # --- capture ------------------------------------------------------------------------------

    def _sessions(self) -> Any:
        """Yield sources to read in turn: the replay files, or the configured source for ever
        (reopened with backoff when it fails or stalls, looped when `source.loop`)."""
        if self.videos:
            for path in self.videos:
                yield AvSource(self._source_cfg, path, encoders=self.cfg.clip.encoders)
            return
        while not self._stop.is_set():
            cfg = self._source_cfg
            yield AvSource(cfg, encoders=self.cfg.clip.encoders)
            if cfg.kind == "file" and not cfg.loop and not self._restart_source.is_set():
                return

    def _capture_loop(self) -> None:
        backoff = const.REOPEN_BACKOFF_START_S
        t_offset = 0.0
        sessions = 0
        try:
            for src in self._sessions():
                if self._stop.is_set():
                    break
                self._restart_source.clear()
                src.t_offset = t_offset
                with self._source_lock:
                    self._source = src
                try:
                    src.open()
                except SourceError as exc:
                    self.source_error = str(exc)
                    if not src.live and self.videos:
                        log.error("replay: %s", exc)
                        self.metrics.inc("edge_agent_source_errors_total")
                        continue
                    if not src.live and not src.cfg.loop:
                        log.error("source: %s", exc)
                        break
                    log.warning("source unavailable, retrying in %.0f s: %s", backoff, exc)
                    self.metrics.inc("edge_agent_source_restarts_total")
                    if self._stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, const.REOPEN_BACKOFF_CAP_S)
                    continue
                sessions += 1
                # a reload may have turned a fast replay into a live source, or back
                self._live_queues = src.live or src.cfg.realtime
                self._frames.blocking = not self._live_queues
                self.stats.source_live = src.live
                if sessions > 1:
                    self.ring.reset()  # packets of the old session cannot mix with the new stream
                info = src.info
                assert info is not None
                log.info("source open kind=%s source=%s codec=%s size=%dx%d fps=%s", src.cfg.kind,
                         src.describe, info.codec, info.width, info.height, f"{info.fps:.2f}" if info.fps else "?")
                if info.codec == "rawvideo" and info.width and info.fps:
                    frame_bytes = info.width * info.height * 2
                    held_s = self.ring.max_bytes / (frame_bytes * info.fps)
                    if held_s < self._ring_keep_s(self.cfg) - const.RING_MARGIN_S:
                        log.warning("raw video: the ring holds only %.1f s at %dx%d, so clips get a short "
                                    "pre-roll; ask the camera for MJPEG or H.264 (source.options.input_format)",
                                    held_s, info.width, info.height)
                got = self._read_session(src)
                if got:
                    backoff = const.REOPEN_BACKOFF_START_S
                    self.source_error = None
                # files played back to back: leave a gap longer than the cooldown between them,
                # so a CID in two recordings makes two events
                t_offset = src.t_offset + (self.cfg.detector.cooldown_s + 1 if not src.live else 0)
                with self._source_lock:
                    self._source = None
                src.close()
                if src.live and not self._stop.is_set():
                    self.metrics.inc("edge_agent_source_restarts_total")
                    log.warning("source ended or stalled, reopening in %.0f s source=%s", backoff, src.describe)
                    if self._stop.wait(backoff):
                        break
                    if not got:
                        backoff = min(backoff * 2, const.REOPEN_BACKOFF_CAP_S)
        except Exception:
            log.exception("capture thread failed")
            self.source_error = "capture thread failed"
        finally:
            self._packets_q.put(_END)

    def _read_session(self, src: AvSource) -> bool:
        got = False
        need_keyframe = False
        stall = threading.Thread(target=self._watch_stall, args=(src,), daemon=True, name="stall-watch")
        self._session_alive = True
        if src.live:
            stall.start()
        try:
            for pkt in src.packets():
                got = True
                self.stats.last_frame_mono = time.monotonic()
                self.metrics.inc("edge_agent_frames_total")
                self.ring.append(pkt)
                if not self.ready.is_set():
                    self.ready.set()
                if not self._live_queues:
                    self._packets_q.put(pkt)
                elif need_keyframe and not pkt.keyframe:
                    self.metrics.inc("edge_agent_frames_dropped_total")
                else:
                    try:
                        self._packets_q.put_nowait(pkt)
                        need_keyframe = False
                    except queue.Full:
                        # the decoder fell behind: drop to it until the next keyframe (a P-frame
                        # without its references would decode to garbage); the ring keeps them all
                        self.metrics.inc("edge_agent_frames_dropped_total")
                        need_keyframe = True
                if self._stop.is_set() or self._restart_source.is_set():
                    break
        except SourceError as exc:
            self.source_error = str(exc)
            log.warning("source read failed: %s", exc)
        finally:
            self._session_alive = False
        return got

    def _watch_stall(self, src: AvSource) -> None:
        """No frame for `source.stall_s`: interrupt the read so the capture loop reopens."""
        stall_s = src.cfg.stall_s
        opened = time.monotonic()
        while self._session_alive and not self._stop.wait(min(1.0, stall_s / 4)):
            last = self.stats.last_frame_mono or opened
            last = max(last, opened)
            if time.monotonic() - last > stall_s:
                log.warning("source stalled: no frame for %.0f s source=%s", stall_s, src.describe)
                self.metrics.inc("edge_agent_source_stalls_total")
                src.interrupt()
                return

    # --- decode -------------------------------------------------------------------------------

    def _decode_loop(self) -> None:
        info: StreamInfo | None = None
        decoder: Any = None
        times: dict[int, tuple[float, float]] = {}
        next_t = float("-inf")
        intra = False
        try:
            while True:
                pkt = self._packets_q.get()
                if pkt is _END:
                    break
                assert isinstance(pkt, Packet)
                if pkt.stream is not info:
                    info = pkt.stream
                    decoder = self._new_decoder(info)
                    intra = info.codec in _INTRA_ONLY
                    times.clear()
                    next_t = float("-inf")
                period = 1.0 / self.cfg.detector.rate_hz
                if intra and pkt.t < next_t:
                    continue  # every packet is a whole picture: only decode the ones we analyse
                times[pkt.pts] = (pkt.t, pkt.wall)
                if len(times) > 512:  # packets that never produced a frame
                    for k in list(times)[:256]:
                        del times[k]
                try:
                    frames = decoder.decode(to_av_packet(pkt, info.time_base))
                except av.error.FFmpegError:
                    self.metrics.inc("edge_agent_decode_errors_total")
                    continue
                for frame in frames:
                    t, wall = times.pop(frame.pts, (pkt.t, pkt.wall)) if frame.pts is not None else (pkt.t, pkt.wall)
                    self.metrics.inc("edge_agent_frames_decoded_total")
                    if t + 1e-6 < next_t:
                        continue
                    next_t = max(next_t + period, t + period * 0.5) if next_t > float("-inf") else t + period
                    self._frames.put(GrayFrame(luma(frame), t, wall))
            if decoder is not None:
                try:
                    for frame in decoder.decode(None):
                        t, wall = times.pop(frame.pts, (frame.time or 0.0, 0.0))
                        if t + 1e-6 >= next_t:
                            next_t = t + 1.0 / self.cfg.detector.rate_hz
                            self._frames.put(GrayFrame(luma(frame), t, wall))
                except av.error.FFmpegError:
                    self.metrics.inc("edge_agent_decode_errors_total")
        except Exception:
            log.exception("decode thread failed")
        finally:
            self._frames.put(_END)

    @staticmethod
    def _new_decoder(info: StreamInfo) -> Any:
        dec = av.CodecContext.create(info.codec, "r")
        if info.extradata:
            dec.extradata = info.extradata
        if info.codec == "rawvideo":
            dec.width, dec.height, dec.pix_fmt = info.width, info.height, info.pix_fmt
        # FFmpeg's default slice threading uses one core on single-slice streams; AUTO adds
        # frame threads (measured 40-55% faster on 1080p, DESIGN.md section 3)
        dec.thread_type = "AUTO"
        return dec

    # --- detect -------------------------------------------------------------------------------

    def _detect_loop(self) -> None:
        rejected_last: dict[bytes, float] = {}
        try:
            while True:
                item = self._frames.get()
                if item is _END:
                    break
                self._apply_pending()
                frame: GrayFrame = item
                try:
                    found = self.detector.detect(frame)
                except Exception:
                    log.exception("QR decoder failed on a frame t=%.3f", frame.t)
                    self.metrics.inc("edge_agent_detector_errors_total")
                    continue
                self.metrics.inc("edge_agent_frames_analysed_total")
                self.metrics.set("edge_agent_detect_ms", round(self.detector.last_ms, 2))
                for det in found:
                    self._handle(det, rejected_last)
        except Exception:
            log.exception("detect thread failed")
        finally:
            # every detection has opened its recording: now the end of the video may close them
            if not self.stats.source_live or self._stop.is_set():
                self.ring.flush()
            self._clips_q.put(_END)

    def _handle(self, det: Detection, rejected_last: dict[bytes, float]) -> None:
        try:
            text = det.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        cid = self.validator.check(text) if text is not None else None
        if cid is None:
            self.metrics.inc("edge_agent_payloads_rejected_total")
            last = rejected_last.get(det.payload)
            if last is None or det.t - last > self.cfg.detector.cooldown_s:
                log.warning("payload rejected: not a valid CID payload=%s t=%.3f", escape_payload(det.payload), det.t)
            rejected_last[det.payload] = det.t
            if len(rejected_last) > 1024:
                rejected_last.clear()
            return
        self.metrics.inc("edge_agent_detections_total")
        action, ev = self.tracker.observe(cid, det)
        if action is Action.NEW:
            rec = EventRecord(ev.event_id, cid, contract.rfc3339(det.wall), det.t)
            with self._events_lock:
                self.events_total += 1
                self.recent[ev.event_id] = rec
                while len(self.recent) > const.RECENT_EVENTS:
                    self.recent.popitem(last=False)
                self._open_events[ev.event_id] = (ev, rec)
            log.info("detected cid=%s clip=%s t=%.3f decoder=%s", cid, ev.event_id, det.t, det.decoder)
            self.ring.start_recording(ev.event_id, ev.start_t, ev.end_t)
        elif action is Action.EXTEND:
            if not self.ring.extend(ev.event_id, ev.end_t):
                self.tracker.close(ev)  # already cut: later sightings are suppressed
            else:
                log.debug("extended cid=%s clip=%s end_t=%.3f", cid, ev.event_id, ev.end_t)

    def _on_recording(self, rec: Recording) -> None:
        """Called by the ring (capture or detect thread) when a recording has its post-roll: hand it on.
        Past const.CLIP_BACKLOG_BYTES of recordings waiting, fast replay waits for the clip worker (every
        clip is made, deterministically), while a live source never waits: the recording's video is let
        go, counted, and its CID still goes out with `clip.error` saying why."""
        size = rec.size_bytes
        with self._backlog:
            if not self._live_queues:
                while self._backlog_count and (self._backlog_bytes + size > const.CLIP_BACKLOG_BYTES
                                               or self._backlog_count >= const.CLIP_BACKLOG_COUNT):
                    self._backlog.wait(0.5)
            elif (self._backlog_bytes + size > const.CLIP_BACKLOG_BYTES
                  or self._backlog_count >= const.CLIP_BACKLOG_COUNT):
                rec.packets = []
                rec.dropped = "clip worker behind (encoding or disk too slow for the label rate): video dropped"
                size = 0
                self.metrics.inc("edge_agent_clips_dropped_total")
            self._backlog_bytes += size
            self._backlog_count += 1
        self._clips_q.put(rec)

    def _backlog_done(self, rec: Recording) -> None:
        with self._backlog:
            self._backlog_bytes = max(0, self._backlog_bytes - rec.size_bytes)
            self._backlog_count = max(0, self._backlog_count - 1)
            self._backlog.notify_all()

    # --- clips --------------------------------------------------------------------------------

    def _clip_loop(self) -> None:
        while True:
            rec = self._clips_q.get()
            if rec is _END:
                break
            try:
                self._make_clip(rec)
            except Exception:
                log.exception("clip worker failed clip=%s", getattr(rec, "key", "?"))
            finally:
                self._backlog_done(rec)
                rec.packets = []

    def _make_clip(self, rec: Recording) -> None:
        with self._events_lock:
            opened = self._open_events.pop(rec.key, None)
        if opened is None:
            return
        ev, record = opened
        ev.closed = True
        part = self.sink.part_path(ev.event_id)
        started = time.perf_counter()
        clip_info: contract.ClipInfo
        video: Path | None
        try:
            if rec.dropped:
                raise ClipError(rec.dropped)
            result = self.clip_maker.make(rec, part)
            clip_info, video = result.info, result.path
            ms = (time.perf_counter() - started) * 1000
            record.clip_ms = round(ms, 1)
            self.metrics.inc("edge_agent_clips_total")
            self.metrics.set("edge_agent_clip_ms", round(ms, 1))
            log.info("clip ready cid=%s clip=%s duration_s=%.2f frames=%s bytes=%s %s ms=%.0f%s", ev.cid,
                     ev.event_id, clip_info.duration_s or 0, clip_info.frames, clip_info.size_bytes,
                     "remux" if result.remuxed else f"encoder={result.encoder}", ms,
                     " pre_roll_short" if rec.truncated_start else "")
        except ClipError as exc:
            part.unlink(missing_ok=True)
            clip_info, video = contract.ClipInfo(error=str(exc)), None
            self.metrics.inc("edge_agent_clip_errors_total")
            log.error("clip failed cid=%s clip=%s error=%s (sending the CID without video)", ev.cid,
                      ev.event_id, exc)
        meta = contract.Metadata(
            event_id=ev.event_id, device_id=self.cfg.device_id, cid=ev.cid, detected_at=record.detected_at,
            clip=clip_info,
            detection=contract.DetectionInfo(
                decoder=ev.first.decoder, polygon=list(ev.first.polygon), frame_width=ev.first.frame_width,
                frame_height=ev.first.frame_height, hits=ev.hits,
                last_detected_at=contract.rfc3339(ev.first.wall + (ev.last_t - ev.first.t))),
            agent=contract.AgentInfo(version=__version__),
        ).model_dump(mode="json", exclude_none=True)
        record.clip = meta["clip"]
        record.clip_error = clip_info.error
        record.queued = self.sink.put(ev.event_id, ev.cid, meta, video)
        if not record.queued:
            log.error("clip refused by the spool cid=%s clip=%s", ev.cid, ev.event_id)
        if self.on_event is not None:
            self.on_event(record)

    def mark_upload(self, event_id: str, cid: str, result: str) -> None:
        """Uploader callback: the delivery state of a recent event."""
        with self._events_lock:
            rec = self.recent.get(event_id)
            if rec is not None:
                rec.upload_result = result
                rec.uploaded = result in ("delivered", "duplicate")
