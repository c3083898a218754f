"""Turning a finished recording into a validated H.264 MP4 clip.

H.264 in and no resize or re-timing asked: remux (copy packets, ~ms). Otherwise decode
and encode with the first encoder of `clip.encoders` that opens on this device. Either
way the clip starts on a keyframe, its timestamps are rebased to zero, it carries
`+faststart` (moov first, so a server can read it while it streams), and it is opened
again and decoded (keyframes) before anyone is told it exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from edge_agent.capture.media import Packet, StreamInfo, open_decoder, to_av_packet
from edge_agent.config import ClipConfig
from edge_agent.delivery import contract
from edge_agent.pipeline.ring import Recording

log = logging.getLogger(__name__)

_OUT_TIME_BASE = Fraction(1, 90000)  # MPEG's 90 kHz clock: exact for 24/25/30/60 fps and NTSC rates


class ClipError(Exception):
    """No valid clip could be made; the CID is still delivered with this as `clip.error`."""


@dataclass
class ClipResult:
    info: contract.ClipInfo
    path: Path
    remuxed: bool
    encoder: str | None


class ClipMaker:
    """Stateless per clip except for the memory of which encoders failed to open here."""

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg
        self._broken_encoders: set[str] = set()
        self._lock = threading.Lock()

    def make(self, rec: Recording, out_path: Path) -> ClipResult:
        packets = _usable(rec.packets)
        if not packets:
            raise ClipError("no decodable video in the recording (no keyframe)")
        info = packets[0].stream
        remux = info.remuxable and not self.cfg.reencode
        encoder: str | None = None
        if remux:
            try:
                self._remux(packets, info, out_path)
                clip = validate(out_path)
            except (av.error.FFmpegError, ClipError) as exc:
                # a resolution change or a timestamp jump inside the recording: copying packets cannot
                # make a valid MP4 of it, decoding and encoding on the capture times can
                out_path.unlink(missing_ok=True)
                log.warning("remux failed, re-encoding the clip error=%s", exc)
                remux = False
        if not remux:
            try:
                encoder = self._encode(packets, info, out_path)
            except av.error.FFmpegError as exc:
                out_path.unlink(missing_ok=True)
                raise ClipError(f"encode failed: {exc}") from exc
            clip = validate(out_path)
        clip.start_at = contract.rfc3339(packets[0].wall)
        clip.end_at = contract.rfc3339(packets[0].wall + (clip.duration_s or 0.0))
        return ClipResult(clip, out_path, remux, encoder)

    # --- remux --------------------------------------------------------------------------------

    def _remux(self, packets: list[Packet], info: StreamInfo, out_path: Path) -> None:
        offset = packets[0].pts
        with av.open(str(out_path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream_from_template(info.template)
            for p in packets:
                pkt = to_av_packet(p, info.time_base)
                pkt.pts = p.pts - offset
                pkt.dts = (p.dts if p.dts is not None else p.pts) - offset
                pkt.stream = stream
                out.mux(pkt)

    # --- encode -------------------------------------------------------------------------------

    def _encode(self, packets: list[Packet], info: StreamInfo, out_path: Path) -> str:
        decoder = open_decoder(info)
        width, height = self._size(info)
        fps = self.cfg.fps or info.fps or 30.0
        t0 = packets[0].t
        min_step = 1.0 / self.cfg.fps if self.cfg.fps else 0.0
        # decode on capture times, not the stream's own timestamps: those may jump or repeat (a camera
        # that restarted its clock), which is why a recording comes here instead of being remuxed
        packets = [dataclasses.replace(p, pts=round((p.t - t0) / info.time_base), dts=None) for p in packets]
        times = {p.pts: p.t for p in packets}
        errors: list[str] = []
        for name in self.cfg.encoders:
            with self._lock:
                if name in self._broken_encoders:
                    continue
            try:
                with av.open(str(out_path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
                    stream = self._open_encoder(out, name, width, height, fps)
                    last_t = -1.0
                    for frame in _decode_all(decoder, packets, info):
                        t = times.get(frame.pts, 0.0) - t0 if frame.pts is not None else last_t + 1 / fps
                        if t < 0 or (last_t >= 0 and t - last_t < min_step - 1e-6) or t <= last_t:
                            continue
                        last_t = t
                        out_frame = frame.reformat(width=width, height=height, format="yuv420p")
                        out_frame.pts = round(t / _OUT_TIME_BASE)
                        out_frame.time_base = _OUT_TIME_BASE
                        for pkt in stream.encode(out_frame):
                            out.mux(pkt)
                    for pkt in stream.encode(None):
                        out.mux(pkt)
                return name
            except (av.error.FFmpegError, ValueError) as exc:
                errors.append(f"{name}: {exc}")
                out_path.unlink(missing_ok=True)
                with self._lock:
                    self._broken_encoders.add(name)
                log.warning("encoder unavailable encoder=%s error=%s (trying the next in clip.encoders)", name, exc)
                decoder = open_decoder(info)
        raise ClipError("no H.264 encoder in clip.encoders could be opened: " + "; ".join(errors))

    def _open_encoder(self, out: av.container.OutputContainer, name: str, width: int, height: int,
                      fps: float) -> av.video.stream.VideoStream:
        rate = Fraction(fps).limit_denominator(1001)
        stream = out.add_stream(name, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = _OUT_TIME_BASE
        cc = stream.codec_context
        cc.gop_size = max(1, round(fps))  # a keyframe every second: clips cut from clips stay tight
        if name == "libx264":
            cc.options = {"preset": self.cfg.preset, "crf": str(self.cfg.crf), "tune": "zerolatency"}
        else:
            # hardware encoders take a bitrate, not a CRF: ~0.1 bit per pixel per frame is H.264's sweet spot
            cc.bit_rate = int(width * height * fps * 0.1)
        cc.open()  # fail here, before any frame, if the device is absent
        return stream

    def _size(self, info: StreamInfo) -> tuple[int, int]:
        w, h = self.cfg.width, self.cfg.height
        if w and not h:
            h = round(info.height * w / info.width)
        elif h and not w:
            w = round(info.width * h / info.height)
        w, h = w or info.width, h or info.height
        return w - w % 2, h - h % 2  # yuv420p needs even dimensions


def _usable(packets: list[Packet]) -> list[Packet]:
    """From the first keyframe on; leading pictures that show before it are dropped (they
    may reference the previous GOP) so rebased timestamps never go negative."""
    first = next((i for i, p in enumerate(packets) if p.keyframe), None)
    if first is None:
        return []
    key_t = packets[first].t  # capture times, which stay in order where the stream's own timestamps jump
    return [p for p in packets[first:] if p.t >= key_t]


def _decode_all(decoder: av.CodecContext, packets: list[Packet], info: StreamInfo):
    for p in packets:
        try:
            yield from decoder.decode(to_av_packet(p, info.time_base))
        except av.error.InvalidDataError:
            continue  # one corrupt packet costs a frame, not the clip
    yield from decoder.decode(None)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def validate(path: Path) -> contract.ClipInfo:
    """Open the written clip like a receiver would: an H.264 stream, keyframes that decode,
    strictly increasing presentation times, a sane duration. Raises ClipError otherwise."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ClipError("clip has no video stream")
            v = c.streams.video[0]
            codec, width, height, tb = v.codec_context.name, v.codec_context.width, v.codec_context.height, v.time_base
            # one pass: every timestamp, and every keyframe decoded (the others skipped). A decode left
            # unfinished leaks the decoder's pending buffers (measured ~6 kB a clip, ~100 kB on a loaded
            # machine), so the decoder is always drained to its end.
            cc = v.codec_context
            cc.skip_frame = "NONKEY"
            pts: list[int] = []
            keyframes = 0
            for pkt in c.demux(v):
                if pkt.size and pkt.pts is not None:
                    pts.append(pkt.pts)
                keyframes += len(cc.decode(pkt))
            pts.sort()
    except av.error.FFmpegError as exc:
        raise ClipError(f"clip does not decode: {exc}") from exc
    if codec != "h264":
        raise ClipError(f"clip codec is {codec}, expected h264")
    if not pts or keyframes == 0:
        raise ClipError("clip has no decodable frames")
    if any(b <= a for a, b in zip(pts, pts[1:], strict=False)):
        raise ClipError("clip presentation timestamps are not strictly increasing")
    frame_s = float((pts[-1] - pts[0]) * tb) / (len(pts) - 1) if len(pts) > 1 else 1 / 30
    duration = float((pts[-1] - pts[0]) * tb) + frame_s
    return contract.ClipInfo(
        duration_s=round(duration, 3), frames=len(pts), fps=round(len(pts) / duration, 3) if duration else None,
        width=width, height=height, codec=codec, size_bytes=path.stat().st_size, sha256=sha256_file(path),
    )
