"""The decode stage: compressed packets in, the grayscale frames the detector asks for out.

Which frames detection analyses is decided as packets arrive, in decode order: the first packet of
each 1/rate_hz slot of capture time (`FramePicker`). Knowing that before decoding lets the decoder
skip what nobody will look at: intra-only codecs (MJPEG, raw) are not decoded at all outside the
picks, and H.264's non-reference pictures (most B-frames) are skipped with FFmpeg's
`skip_frame=NONREF`, set packet by packet (frame threads take it per packet). Reference pictures
are always decoded, since later ones are built from them (on the 1080p sample, x264 with B-frames, 394
of 600 pictures are). Before any of that, the capture thread's `KeyframeWindow` keeps the end of each
keyframe interval from the decoder altogether (detector.max_blind_s).

The stage is one of capture's packet consumers (`capture.consumer.PacketConsumer`: `offer`, `end`,
`status`). With Backpressure.DROP (a camera) the capture thread offers packets without ever waiting on
this stage; with BLOCK (a file read as fast as it decodes) it waits for room and nothing is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av

from edge_agent.capture.media import CameraPicture, GrayFrame, Packet, StreamInfo, luma, open_decoder, to_av_packet
from edge_agent.config import Config
from edge_agent.config.live import PendingConfig
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import END, FrameSlot
from edge_agent.pipeline.keyframe_window import KeyframeWindow
from edge_agent.stage import Backpressure

# Codecs whose every packet decodes on its own: frames the detector does not want are not decoded.
INTRA_ONLY = frozenset({"mjpeg", "rawvideo", "png", "bmp", "ljpeg"})
# Fast replay: how far decode may run ahead of detection, in packets (~1 s at 30 fps).
REPLAY_QUEUE = 32
# DROP: how much video may wait for the decoder before capture starts dropping to it. Seconds, not
# packets: a session begins with a backlog handed over at once (FFmpeg's probing and the frame-rate
# prefetch of an untimed pipe: ~2.3 s on a raw H.264 pipe, measured), which is not a decoder behind;
# a queue counted in packets (64) would overflow on it, leaving ~2 s of video undecoded until a keyframe.
LIVE_QUEUE_S = 4.0
LIVE_QUEUE_MAX = 512  # packets, whatever the timestamps say
# A camera's stream is decoded on one thread at first; this much video waiting (beyond a session's start-up backlog of
# ~2.3 s, before the 4 s at which capture drops) means the core cannot keep up: frame threads then.
THREADS_BEHIND_S = 3.0
# Picked packets whose frame never came out (a broken stream): forget the oldest past this.
MAX_PENDING = 512
# Slots remembered by the picker: far more than H.264 reorders (a few frames).
SLOTS_KEPT = 64
# Capture time going back further than this is a new timeline, not B-frame reordering (a few frames).
JUMP_BACK_S = 1.0
# In the inbox after a camera session's last packet: the decoder gives up what it holds (`session_ended`).
SESSION_END = object()
# In the inbox after a reload: the decode thread takes the config even when no packet comes.
RECONFIGURED = object()

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeStatus:
    decoded: int
    dropped: int  # packets the capture thread could not hand over (DROP, decoder behind)
    undecoded: int  # packets left undecoded at the end of a keyframe interval (detector.max_blind_s)
    errors: int
    threaded: bool = False  # frame threads: fast replay, or a camera's stream one core could not keep up with
    # the configs in use: the capture thread's side (the keyframe window: detector.max_blind_s; a camera's
    # own pictures picked at detector.rate_hz) and the decode thread's (its picks at detector.rate_hz)
    feed_config: Config | None = None
    config: Config | None = None
    watched: bool = False  # a live view is looking: every frame is decoded


class FramePicker:
    """One frame in each 1/rate_hz slot of capture time: the first of the slot to arrive.

    Packets come in decode order. A stream without B-frames arrives in capture order, so the picks
    are evenly spaced; with B-frames, a slot's first packet is usually its reference picture (P),
    which is decoded anyway, and the B-frames of a slot already served can be skipped. The rate is
    read at each packet: a reload applies at the next one.

    Time that goes back by more than JUMP_BACK_S (timestamps that start again inside one stream) is a
    new timeline: the slots claimed on the old one would otherwise hide every frame of the new one at
    the same times. The picker starts afresh and counts it in `jumps`."""

    def __init__(self) -> None:
        self._claimed: set[int] = set()
        self._newest = -(2**62)
        self._rate = 0.0
        self.jumps = 0
        self.last_jump: tuple[float, float] | None = None  # (newest t before, t after) of the last jump

    def reset(self) -> None:
        """A new source session (its clock starts again) or a new rate (new slots)."""
        self._claimed.clear()
        self._newest = -(2**62)

    def pick(self, t: float, rate_hz: float) -> bool:
        if rate_hz != self._rate:
            self._rate = rate_hz
            self.reset()
        slot = math.floor(t * rate_hz + 1e-6)  # the epsilon: k / fps * fps may land just under k
        if slot < self._newest - max(1.0, JUMP_BACK_S * rate_hz):
            self.jumps += 1
            self.last_jump = (self._newest / rate_hz, t)
            self.reset()
        if slot in self._claimed:
            return False
        self._claimed.add(slot)
        if slot > self._newest:
            self._newest = slot
            if len(self._claimed) > 2 * SLOTS_KEPT:
                self._claimed = {s for s in self._claimed if s > slot - SLOTS_KEPT}
        return True


class DecodeStage:
    name = "decode"

    def __init__(self, out: FrameSlot, metrics: Metrics, backpressure: Callable[[], Backpressure], cfg: Config):
        # Two threads run this stage, each on the config it took last (written by that thread alone, a reload
        # offered to each and taken at its next packet): the capture thread (`offer`: the keyframe window,
        # detector.max_blind_s; a camera's own pictures, detector.rate_hz) and the decode thread (`run`: its
        # picks, detector.rate_hz).
        self.feed_config = cfg
        self.config = cfg
        self._feed_pending = PendingConfig()
        self._pending = PendingConfig()
        # set by the live view while someone looks (`watch`): every frame is then decoded whatever
        # detector.max_blind_s says (a picture that stops for half of each second is no view to aim by)
        self._watched = threading.Event()
        self._closed = threading.Event()  # the decode thread has ended: nothing waits to put into its inbox
        self.out = out
        self.metrics = metrics
        self._backpressure = backpressure
        drop = backpressure() is Backpressure.DROP
        self.inbox: queue.Queue[Any] = queue.Queue(LIVE_QUEUE_MAX if drop else REPLAY_QUEUE)
        self._queued_t: deque[float] = deque()  # DROP: capture times of the packets waiting, oldest first
        self._need_keyframe = False
        self._jump_logged = False
        self._pictures = FramePicker()  # capture thread only: pictures that come without decoding
        # capture thread only: which packets of each keyframe interval are decoded at all
        self._window = KeyframeWindow()
        self._window_stream: StreamInfo | None = None
        self.decoded = self.dropped = self.errors = self.undecoded = 0
        self._threaded = False  # written by the decode thread only, read by status()

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """Live part (any thread): offered to both threads, each takes it at its next packet (the decode
        thread is also woken: a camera that gives its own pictures sends it none)."""
        self._feed_pending.offer(new, changed)
        self._pending.offer(new, changed)
        with contextlib.suppress(queue.Full):
            self.inbox.put_nowait(RECONFIGURED)

    def watch(self, watched: bool) -> None:
        """The live view (its thread): someone is looking, or nobody is any more."""
        if watched:
            self._watched.set()
        else:
            self._watched.clear()

    def _take_feed_config(self) -> None:
        """Capture thread, at each packet: the feed's config, if a reload handed one over."""
        taken = self._feed_pending.take()
        if taken is not None:
            self.feed_config = taken[0]

    def _take_config(self) -> None:
        """Decode thread, at each packet: the stage's config, if a reload handed one over."""
        taken = self._pending.take()
        if taken is not None:
            self.config = taken[0]

    def offer(self, pkt: Packet) -> None:
        """Capture thread. The keyframe window first (detector.max_blind_s: the end of each interval is not
        decoded at all). BLOCK (fast replay) waits for room (deterministic); DROP (a camera) never waits:
        when the decoder falls behind, packets are dropped to it until the next keyframe (a P-frame without
        its references would decode to garbage); the ring keeps them all."""
        self._take_feed_config()
        if pkt.stream is not self._window_stream:
            self._window_stream = pkt.stream
            self._window.reset()
        if not self._window.decode(pkt, self._blind_s):
            self.undecoded += 1
            self.metrics.frames_undecoded.inc()
            return
        if self._backpressure() is Backpressure.BLOCK:
            self._put_waiting(pkt)
            return
        if self._need_keyframe and not pkt.keyframe:
            self._drop()
            return
        if self._queued_t and pkt.t - self._queued_t[0] > LIVE_QUEUE_S:
            self._drop()
            self._need_keyframe = True
            return
        self._queued_t.append(pkt.t)  # before the put: the decode thread takes it off when it gets the packet
        try:
            self.inbox.put_nowait(pkt)
            self._need_keyframe = False
        except queue.Full:
            self._queued_t.pop()
            self._drop()
            self._need_keyframe = True

    def _blind_s(self) -> float:
        """Capture thread, at a keyframe: how much of this keyframe interval may go undecoded."""
        return 0.0 if self._watched.is_set() else self.feed_config.detector.max_blind_s

    def offer_picture(self, picture: CameraPicture) -> None:
        """Capture thread: a camera's own picture of a frame (picamera2's lores stream), which needs no
        decoding. The same one-a-slot rule picks them, by capture time, before anything is copied: only
        the picked ones are taken out of the camera's buffer, straight into the detector's hand-off
        (which never waits for a camera)."""
        self._take_feed_config()
        if self._pictures.pick(picture.t, self.feed_config.detector.rate_hz):
            self.out.put(picture.take())

    def _drop(self) -> None:
        self.dropped += 1
        self.metrics.frames_dropped.inc()

    def end(self) -> None:
        """No more packets (the capture thread has ended): decode what is queued, then pass END on."""
        self._put_waiting(END)

    def _put_waiting(self, item: Any) -> None:
        """BLOCK: wait for room in the inbox, but not for a decode thread that has ended (done, or died)."""
        while not self._closed.is_set():
            try:
                self.inbox.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def session_ended(self) -> None:
        """Capture thread, as a camera's session ends (it stalled, failed or ended): once the packets queued
        before it are decoded, the decoder gives up the pictures it still holds (reordering, frame threads),
        each with its own packet's capture time, instead of keeping them until the camera is back or the
        agent stops. Never waits: with the inbox full (a decoder 4 s behind) the next session's first packet
        replaces the decoder, and what it held is let go."""
        with contextlib.suppress(queue.Full):
            self.inbox.put_nowait(SESSION_END)

    def status(self) -> DecodeStatus:
        return DecodeStatus(self.decoded, self.dropped, self.undecoded, self.errors, self._threaded,
                            self.feed_config, self.config, self._watched.is_set())

    def run(self) -> None:
        info: StreamInfo | None = None
        decoder: Any = None
        picks: dict[int, tuple[float, float]] = {}  # pts -> (t, mono) of the frames detection will get
        picker = FramePicker()
        intra = skipping = threaded = False
        while True:
            pkt = self.inbox.get()
            if pkt is END:
                break
            if pkt is RECONFIGURED:
                self._take_config()
                continue
            if pkt is SESSION_END:
                if decoder is not None:
                    self._flush(decoder, picks)
                info = decoder = None  # drained for good: the next session's first packet opens another
                continue
            if self._queued_t:
                self._queued_t.popleft()
            self._take_config()
            if pkt.stream is not info:
                info = pkt.stream
                # a camera is paced: one decoding thread keeps up with it, and frame threads' own work
                # costs ~10% more CPU (measured, benchmarks/stage_cpu.py); fast replay wants throughput
                threaded = self._threaded = self._backpressure() is Backpressure.BLOCK
                decoder = open_decoder(info, threads=threaded, analysis=True)
                intra = info.codec in INTRA_ONLY
                skipping = False
                picks.clear()
                picker.reset()
                self._jump_logged = False  # one warning per source session
            elif not threaded and pkt.keyframe and self._behind() > THREADS_BEHIND_S:
                # a core too slow for this stream alone (a Pi 4 on 1080p): frame threads from the next
                # keyframe on, rather than dropping packets; the pictures still waiting come out first
                log.warning("decode: one thread is %.1f s behind the camera: decoding with frame threads from "
                            "here on", self._behind())
                self._flush(decoder, picks)
                threaded = self._threaded = True
                decoder = open_decoder(info, threads=True, analysis=True)
                skipping = False
            jumps = picker.jumps
            wanted = picker.pick(pkt.t, self.config.detector.rate_hz)
            if picker.jumps != jumps and picker.last_jump is not None:
                log.log(logging.DEBUG if self._jump_logged else logging.WARNING,
                        "decode: capture time went back from t=%.3f to t=%.3f: frames are picked afresh (jumps=%d)",
                        *picker.last_jump, picker.jumps)
                self._jump_logged = True
            if wanted:
                picks[pkt.pts] = (pkt.t, pkt.mono)
                if len(picks) > MAX_PENDING:
                    for k in list(picks)[: MAX_PENDING // 2]:
                        del picks[k]
            elif intra:
                continue  # every packet is a whole picture: only decode the ones we analyse
            if skipping == wanted:  # only on a change: the setter is not free
                skipping = not wanted
                decoder.skip_frame = "NONREF" if skipping else "DEFAULT"
            try:
                with self.metrics.decode_seconds.time():
                    frames = decoder.decode(to_av_packet(pkt, info.time_base))
            except av.error.FFmpegError:
                self.errors += 1
                self.metrics.decode_errors.inc()
                continue
            self._deliver(frames, picks, pkt.pts)
        if decoder is not None:
            self._flush(decoder, picks)

    def _flush(self, decoder: Any, picks: dict[int, tuple[float, float]]) -> None:
        try:
            self._deliver(decoder.decode(None), picks, None)
        except av.error.FFmpegError:
            self.errors += 1
            self.metrics.decode_errors.inc()

    def _behind(self) -> float:
        """Seconds of capture time waiting in the inbox (DROP: the capture thread adds, this one takes)."""
        try:
            return self._queued_t[-1] - self._queued_t[0] if len(self._queued_t) > 1 else 0.0
        except IndexError:  # emptied between the two reads
            return 0.0

    def _deliver(self, frames: list[Any], picks: dict[int, tuple[float, float]], pts: int | None) -> None:
        """Frames come out in presentation order, a few packets late; the picked ones go to detection,
        with their packet's capture time."""
        for frame in frames:
            self.decoded += 1
            self.metrics.frames_decoded.inc()
            picked = picks.pop(frame.pts if frame.pts is not None else pts, None)
            if picked is not None:
                self.out.put(GrayFrame(luma(frame), picked[0], picked[1]))

    def finish(self) -> None:
        """The decode thread's last act (done, or died): detection ends, and capture never waits for it again."""
        self._closed.set()
        self.out.put(END)
