"""H.264 from a raw camera (YUYV, NV12, ...), made as the frames arrive.

Raw 1080p is ~4 MB a frame: the ring's byte cap would hold about a second of it, and every
clip would need encoding anyway. So raw frames are encoded once, here, with the first of
`clip.encoders` that opens (h264_v4l2m2m on a Pi 4; libx264 `ultrafast` + `zerolatency`
elsewhere, which hands each frame back at once), a keyframe every second; the ring then
holds compressed video and clips are remuxed like a camera's own H.264.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import av

from edge_agent.capture import encoders as enc
from edge_agent.capture.media import Packet, StreamInfo

log = logging.getLogger(__name__)

_TIME_BASE = Fraction(1, 90000)
_PIX_FMT = "yuv420p"  # what every H.264 decoder plays


class RawEncoderError(Exception):
    """No encoder opened, or one failed while encoding; the message names each encoder's error."""


class RawEncoder:
    """Owned by the source's reading thread: decode a raw packet (a copy into a frame), encode it."""

    def __init__(self, stream: Any, fps: float, names: Sequence[str]):
        cc = stream.codec_context
        self._decoder = cc
        self.width, self.height = cc.width - cc.width % 2, cc.height - cc.height % 2
        self.fps = fps
        self.name, self._holder, self._stream = self._open(names)
        self.info = StreamInfo(self._stream)
        self.info.codec = "h264"  # the format, not the encoder's name (libx264): decoders and remux go by it
        self.info.time_base = _TIME_BASE
        self.info.fps = fps
        self._times: dict[int, tuple[float, float]] = {}
        self._last_pts = -1
        log.info("raw video encoded on arrival encoder=%s size=%dx%d from=%s fps=%g", self.name, self.width,
                 self.height, cc.pix_fmt, fps)

    def _open(self, names: Sequence[str]) -> tuple[str, Any, Any]:
        errors: list[str] = []
        for name in names:
            if not enc.usable(name):
                continue
            holder = av.open(io.BytesIO(), "w", format="mp4")  # sets GLOBAL_HEADER: SPS/PPS in extradata
            try:
                stream = holder.add_stream(name, rate=Fraction(self.fps).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = self.width, self.height, _PIX_FMT
                stream.time_base = stream.codec_context.time_base = _TIME_BASE
                enc.configure(stream.codec_context, name, self.width, self.height, self.fps,
                              preset="ultrafast", crf=None)
                stream.codec_context.open()
                # writes the (never-used) header: that fills the stream's codec parameters (size, SPS/PPS),
                # which the clip muxer copies; an unwritten output stream has none
                holder.start_encoding()
                return name, holder, stream
            except (av.error.FFmpegError, ValueError) as exc:
                errors.append(f"{name}: {exc}")
                log.warning("encoder unavailable for raw video encoder=%s error=%s (trying the next)", name, exc)
                holder.close()
        raise RawEncoderError("raw video needs an H.264 encoder and none in clip.encoders opened: "
                              + ("; ".join(errors) or "none of them exists in this build"))

    def encode(self, pkt: Any, t: float, mono: float) -> Iterator[Packet]:
        try:
            frames = self._decoder.decode(pkt)
        except av.error.FFmpegError:
            return  # a short raw frame (torn read): one frame lost, not the stream
        for frame in frames:
            pts = round(t / _TIME_BASE)
            if pts <= self._last_pts:
                continue
            self._last_pts = pts
            if frame.format.name != _PIX_FMT or frame.width != self.width or frame.height != self.height:
                frame = frame.reformat(width=self.width, height=self.height, format=_PIX_FMT)
            frame.pts, frame.time_base = pts, _TIME_BASE
            frame.pict_type = av.video.frame.PictureType.NONE  # a raw frame says "I": the GOP is the encoder's
            self._times[pts] = (t, mono)
            yield from self._packets(frame)

    def flush(self) -> Iterator[Packet]:
        yield from self._packets(None)

    def _packets(self, frame: Any) -> Iterator[Packet]:
        try:
            out = self._stream.encode(frame)
        except av.error.FFmpegError as exc:
            raise RawEncoderError(f"encoder {self.name} failed: {exc}") from exc
        for p in out:
            t, mono = self._times.pop(p.pts, (p.pts * _TIME_BASE, 0.0))
            if len(self._times) > 256:  # frames the encoder dropped never come back
                for k in list(self._times)[:128]:
                    del self._times[k]
            yield Packet(bytes(p), p.pts, p.dts, bool(p.is_keyframe), float(t), mono, self.info)
