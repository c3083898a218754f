"""The small data types that flow between stages: a compressed packet with its capture time,
a grayscale frame for the detector, and the stream parameters needed to mux packets later."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from edge_agent.capture.clock import wall_at

_H264_ID = av.codec.Codec("h264", "r").id


class StreamInfo:
    """Codec parameters of one opened source, kept alive independently of the demuxer.

    PyAV can only build an output stream for remuxing from another stream (which owns
    the codec parameters, e.g. H.264's SPS/PPS). The source's own stream dies when the
    source is closed or reopened, while clips cut from its packets may still be in flight,
    so a copy lives in a never-written in-memory container held here. Only H.264 is ever
    remuxed, so only H.264 gets one (MP4 refuses some codecs, raw video among them).
    """

    def __init__(self, stream: av.video.stream.VideoStream):
        cc = stream.codec_context
        self._holder = None
        self.template = None
        if cc.codec.id == _H264_ID:  # the demuxer's h264, or an H.264 encoder's stream (raw cameras)
            self._holder = av.open(io.BytesIO(), "w", format="mp4")
            self.template = self._holder.add_stream_from_template(stream)
        self.codec: str = cc.name
        self.width: int = cc.width
        self.height: int = cc.height
        self.pix_fmt: str | None = cc.pix_fmt
        self.time_base: Fraction = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps: float | None = float(rate) if rate else None
        self.extradata: bytes | None = bytes(cc.extradata) if cc.extradata else None

    @property
    def remuxable(self) -> bool:
        """H.264 can be copied into MP4 as is; anything else (MJPEG, raw) must be encoded."""
        return self.codec == "h264"


@dataclass(slots=True)
class Packet:
    """One compressed (or raw) video packet with the capture time of its frame.

    `t` is seconds on the source's capture clock (monotonic within a source session, media time for a
    file); `mono` is the capture's moment on the monotonic clock, from which `wall` is computed when
    asked, on the wall clock as it is then: a clock that NTP steps after the capture still gives the
    right time (metadata only).
    """

    data: bytes
    pts: int
    dts: int | None
    keyframe: bool
    t: float
    mono: float
    stream: StreamInfo = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def wall(self) -> float:
        return wall_at(self.mono)


@dataclass(slots=True)
class GrayFrame:
    """A decoded frame's luma plane, the detector's only input (no colour conversion needed)."""

    gray: np.ndarray
    t: float
    mono: float  # as Packet.mono

    @property
    def wall(self) -> float:
        return wall_at(self.mono)


@dataclass(slots=True)
class CameraPicture:
    """A camera's own picture of a frame (picamera2's lores stream), still in the camera's buffer: `take()`
    copies out its Y plane, so only the frames the detector will analyse are copied at all. Valid only
    while the capture thread hands it on; the buffer then goes back to the camera."""

    t: float
    mono: float  # as Packet.mono
    copy_luma: Callable[[], np.ndarray] = field(repr=False)

    def take(self) -> GrayFrame:
        return GrayFrame(self.copy_luma(), self.t, self.mono)


# 8-bit formats whose plane 0 is the luma plane.
_LUMA_FIRST_8BIT = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p",
     "yuv411p", "yuv410p", "nv12", "nv21", "nv16", "gray"})


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane as a (height, width) uint8 view, without a colour conversion.

    For planar YUV and NV12 formats plane 0 is luma; its rows may be padded
    (line_size > width), so the view is cropped. Other formats go through swscale.
    """
    if frame.format.name in _LUMA_FIRST_8BIT:
        plane = frame.planes[0]
        buf = np.frombuffer(plane, dtype=np.uint8)
        if plane.line_size * frame.height == buf.size:
            return buf.reshape(frame.height, plane.line_size)[:, : frame.width]
    return frame.to_ndarray(format="gray")


def to_av_packet(p: Packet, time_base: Fraction) -> av.Packet:
    """An FFmpeg-owned copy of a packet, for decoders and muxers."""
    return owned_packet(p.data, p.pts, p.dts, time_base, p.keyframe)


def owned_packet(data: bytes | memoryview, pts: int | None, dts: int | None, time_base: Fraction | None,
                 keyframe: bool) -> av.Packet:
    """A new packet in FFmpeg's own buffer, with these bytes and times and no other flags.

    `av.Packet(bytes)` borrows the Python object's memory and releases it through a callback that
    takes the GIL. A frame-threaded decoder frees packets on its own threads, so freeing that
    decoder (a new source session, a finished clip) while holding the GIL deadlocked the process.
    Copying into FFmpeg's own buffer (~0.1 ms a 1080p frame) makes every free GIL-free. A fresh
    packet also drops a demuxed one's flags (the edit list's "discard", which makes a decoder
    drop the picture).
    """
    out = av.Packet(len(data))
    memoryview(out)[:] = data
    out.pts, out.dts, out.time_base = pts, dts, time_base
    out.is_keyframe = keyframe
    return out


# FFmpeg decoder options for pictures only the QR detector looks at (never for clips, which are remuxed
# or re-encoded from the camera's packets). Skipping the deblocking filter leaves block edges the
# binarizer does not mind, for ~25% less decode CPU on H.264; see open_decoder.
ANALYSIS_OPTIONS: dict[str, str] = {"skip_loop_filter": "all"}


def open_decoder(info: StreamInfo, threads: bool = True, analysis: bool = False) -> av.CodecContext:
    """A decoder for a source's stream, set up in the one place every stage and command uses.

    `threads`: frame and slice threads (`AUTO`, measured 40-55% faster on 1080p H.264, for more CPU in
    all); otherwise one thread, the cheapest in CPU, for a live camera that one core keeps up with and
    for a caller decoding a frame or two. `analysis`: the pictures feed the QR detector only, so the cheap
    ANALYSIS_OPTIONS apply (same reads on the sample videos, measured by benchmarks/analysis_decode.py).
    """
    dec = av.CodecContext.create(info.codec, "r")
    if info.extradata:
        dec.extradata = info.extradata
    if info.codec == "rawvideo":
        dec.width, dec.height, dec.pix_fmt = info.width, info.height, info.pix_fmt
    if threads:
        dec.thread_type = "AUTO"
    else:
        # one thread indeed: FFmpeg's default slice threads split a multi-slice picture across cores,
        # with their own hand-off costs (measured 15% more CPU on 1080p x264, benchmarks/stage_cpu.py)
        dec.thread_count = 1
    if analysis and info.codec == "h264":
        dec.options = dict(ANALYSIS_OPTIONS)
    return dec
