"""The decode stage: compressed packets in, the grayscale frames the detector asks for out.

Every H.264 packet is decoded (later pictures need their references) but only the frames the
detection rate wants are converted; intra-only codecs (MJPEG, raw) skip decoding the rest. The
capture thread offers packets without ever waiting on this stage when the source is live.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av

from edge_agent.capture.media import GrayFrame, Packet, StreamInfo, luma, open_decoder, to_av_packet
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import END, FrameSlot

# Codecs whose every packet decodes on its own: frames the detector does not want are not decoded.
INTRA_ONLY = frozenset({"mjpeg", "rawvideo", "png", "bmp", "ljpeg"})
# Fast replay: how far decode may run ahead of detection, in packets (~1 s at 30 fps).
REPLAY_QUEUE = 32
# Live: packets buffered for the decoder before capture starts dropping to it (~2 s at 30 fps).
LIVE_QUEUE = 64
# Packets whose frame never came out (a broken stream): forget the oldest past this.
MAX_PENDING = 512


@dataclass(frozen=True)
class DecodeStatus:
    decoded: int
    dropped: int  # packets the capture thread could not hand over (live, decoder behind)
    errors: int


class DecodeStage:
    name = "decode"

    def __init__(self, out: FrameSlot, metrics: Metrics, rate_hz: Callable[[], float], live: bool):
        self.out = out
        self.metrics = metrics
        self._rate_hz = rate_hz
        self.live = live
        self.inbox: queue.Queue[Any] = queue.Queue(LIVE_QUEUE if live else REPLAY_QUEUE)
        self._need_keyframe = False
        self.decoded = self.dropped = self.errors = 0

    def set_live(self, live: bool) -> None:
        """A reload may turn a fast replay into a paced one, or back: live drops, replay waits."""
        self.live = live
        self.out.blocking = not live

    def offer(self, pkt: Packet) -> None:
        """Capture thread. Fast replay waits for room (deterministic, every label found); a live
        source never waits: when the decoder falls behind, packets are dropped to it until the next
        keyframe (a P-frame without its references would decode to garbage); the ring keeps them all."""
        if not self.live:
            self.inbox.put(pkt)
            return
        if self._need_keyframe and not pkt.keyframe:
            self._drop()
            return
        try:
            self.inbox.put_nowait(pkt)
            self._need_keyframe = False
        except queue.Full:
            self._drop()
            self._need_keyframe = True

    def _drop(self) -> None:
        self.dropped += 1
        self.metrics.inc("edge_agent_frames_dropped_total")

    def end(self) -> None:
        self.inbox.put(END)

    def status(self) -> DecodeStatus:
        return DecodeStatus(self.decoded, self.dropped, self.errors)

    def run(self) -> None:
        info: StreamInfo | None = None
        decoder: Any = None
        times: dict[int, tuple[float, float]] = {}
        next_t = float("-inf")
        intra = False
        while True:
            pkt = self.inbox.get()
            if pkt is END:
                break
            if pkt.stream is not info:
                info = pkt.stream
                decoder = open_decoder(info)
                intra = info.codec in INTRA_ONLY
                times.clear()
                next_t = float("-inf")
            period = 1.0 / self._rate_hz()
            if intra and pkt.t < next_t:
                continue  # every packet is a whole picture: only decode the ones we analyse
            times[pkt.pts] = (pkt.t, pkt.wall)
            if len(times) > MAX_PENDING:
                for k in list(times)[: MAX_PENDING // 2]:
                    del times[k]
            try:
                frames = self.metrics.timed("edge_agent_decode_seconds", decoder.decode,
                                            to_av_packet(pkt, info.time_base))
            except av.error.FFmpegError:
                self.errors += 1
                self.metrics.inc("edge_agent_decode_errors_total")
                continue
            for frame in frames:
                t, wall = times.pop(frame.pts, (pkt.t, pkt.wall)) if frame.pts is not None else (pkt.t, pkt.wall)
                self.decoded += 1
                self.metrics.inc("edge_agent_frames_decoded_total")
                if t + 1e-6 < next_t:
                    continue
                next_t = max(next_t + period, t + period * 0.5) if next_t > float("-inf") else t + period
                self.out.put(GrayFrame(luma(frame), t, wall))
        if decoder is not None:
            try:
                for frame in decoder.decode(None):
                    t, wall = times.pop(frame.pts, (frame.time or 0.0, 0.0))
                    if t + 1e-6 >= next_t:
                        next_t = t + 1.0 / self._rate_hz()
                        self.out.put(GrayFrame(luma(frame), t, wall))
            except av.error.FFmpegError:
                self.errors += 1
                self.metrics.inc("edge_agent_decode_errors_total")

    def finish(self) -> None:
        self.out.put(END)
