"""Turning a finished recording into a validated H.264 MP4 clip.

H.264 in and no resize or re-timing asked: remux (copy packets, ~ms). Otherwise decode
and encode with the first encoder of `clip.encoders` that opens on this device. Either
way the clip shows exactly the recording's [start_t, end_t): a remuxed file still starts
on the keyframe at or before start_t (nothing is re-encoded), but that lead-in gets
negative timestamps, which FFmpeg's MP4 muxer turns into an edit list that players and
decoders honour, so the presented video begins at start_t. With B-frames the end needs the
same care: the pictures shown just before end_t may be predicted from one shown after it,
which the file holds and the edit list's duration hides (`edit_list.py`). It carries
`+faststart` (moov first, so a server can read it while it streams), and it is opened again
and its first keyframe decoded before anyone is told it exists.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from edge_agent.capture import encoders as enc
from edge_agent.capture.media import Packet, StreamInfo, open_decoder, owned_packet, to_av_packet
from edge_agent.config import ClipConfig
from edge_agent.delivery import contract
from edge_agent.delivery.spool_files import sha256_file
from edge_agent.pipeline.edit_list import EditListError, end_presentation
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
    start_t: float = 0.0  # capture time of the first presented frame: clip time 0


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
        # the presented start: the wanted one, or the first frame there is when the video began later
        start_t = max(rec.start_t, packets[0].t)
        shown = [p for p in packets if start_t <= p.t < rec.end_t]
        if not shown:
            raise ClipError("no frame in the clip's time range")
        first = min(shown, key=lambda p: p.t)
        remux = info.remuxable and not self.cfg.reencode
        encoder: str | None = None
        if remux:
            try:
                self._remux(packets, info, out_path, first.pts)
                if any(p.t >= rec.end_t for p in packets):  # a reference picture the last B-frames need
                    end_presentation(out_path, self._shown_s(shown, info, first))
                clip = validate(out_path)
            except (av.error.FFmpegError, ClipError, EditListError) as exc:
                # a resolution change or a timestamp jump inside the recording: copying packets cannot
                # make a valid MP4 of it, decoding and encoding on the capture times can
                out_path.unlink(missing_ok=True)
                log.warning("remux failed, re-encoding the clip error=%s", exc)
                remux = False
        if not remux:
            try:
                encoder = self._encode(packets, info, out_path, first.t, rec.end_t)
            except av.error.FFmpegError as exc:
                out_path.unlink(missing_ok=True)
                raise ClipError(f"encode failed: {exc}") from exc
            clip = validate(out_path)
        clip.start_at = contract.rfc3339(first.wall)
        clip.end_at = contract.rfc3339(first.wall + (clip.duration_s or 0.0))
        clip.lead_in_s = round(first.t - packets[0].t, 3) if remux else 0.0
        clip.truncated = rec.truncated
        return ClipResult(clip, out_path, remux, encoder, first.t)

    # --- remux --------------------------------------------------------------------------------

    @staticmethod
    def _shown_s(shown: list[Packet], info: StreamInfo, first: Packet) -> float:
        """Seconds from the first shown picture to the end of the last one, on the stream's timestamps
        (the file's own clock, which the edit list counts in)."""
        last = max(shown, key=lambda p: p.pts)
        frame_s = 1 / info.fps if info.fps else (last.t - first.t) / max(1, len(shown) - 1)
        return float((last.pts - first.pts) * info.time_base) + frame_s

    def _remux(self, packets: list[Packet], info: StreamInfo, out_path: Path, shown_pts: int) -> None:
        """Packets copied as they are; the lead-in before `shown_pts` gets negative timestamps, which the
        MP4 muxer hides behind an edit list."""
        frame = round(1 / info.fps / info.time_base) if info.fps else 0
        with av.open(str(out_path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream_from_template(info.template)
            stream.time_base = info.time_base  # the packets' own: no rounding of their timestamps
            for p in packets:
                pkt = to_av_packet(p, info.time_base)
                pkt.pts = p.pts - shown_pts
                pkt.dts = (p.dts if p.dts is not None else p.pts) - shown_pts
                pkt.duration = frame  # the last frame's duration: it completes the presented length
                pkt.stream = stream
                out.mux(pkt)

    # --- encode -------------------------------------------------------------------------------

    def _encode(self, packets: list[Packet], info: StreamInfo, out_path: Path, t0: float, end_t: float) -> str:
        decoder = open_decoder(info)
        width, height = self._size(info)
        fps = self.cfg.fps or info.fps or 30.0
        min_step = 1.0 / self.cfg.fps if self.cfg.fps else 0.0
        # decode on capture times, not the stream's own timestamps: those may jump or repeat (a camera
        # that restarted its clock), which is why a recording comes here instead of being remuxed
        packets = [dataclasses.replace(p, pts=round((p.t - t0) / info.time_base), dts=None) for p in packets]
        times = {p.pts: p.t for p in packets}
        errors: list[str] = []
        for name in self.cfg.encoders:
            if not enc.usable(name):
                continue
            with self._lock:
                if name in self._broken_encoders:
                    continue
            try:
                with av.open(str(out_path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
                    stream = self._open_encoder(out, name, width, height, fps)
                    last_t = -1.0
                    for frame in _decode_all(decoder, packets, info):
                        t = times.get(frame.pts, 0.0) - t0 if frame.pts is not None else last_t + 1 / fps
                        if t < 0 or t >= end_t - t0 or (last_t >= 0 and t - last_t < min_step - 1e-6) or t <= last_t:
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
        raise ClipError("no H.264 encoder in clip.encoders could be opened: "
                        + ("; ".join(errors) or "none of them exists in this build"))

    def _open_encoder(self, out: av.container.OutputContainer, name: str, width: int, height: int,
                      fps: float) -> av.video.stream.VideoStream:
        rate = Fraction(fps).limit_denominator(1001)
        stream = out.add_stream(name, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = _OUT_TIME_BASE
        cc = stream.codec_context
        enc.configure(cc, name, width, height, fps, preset=self.cfg.preset, crf=self.cfg.crf)
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


def validate(path: Path) -> contract.ClipInfo:
    """Open the written clip like a receiver would: an H.264 stream, every frame its sample table
    lists present in the file, a first keyframe that decodes, strictly increasing presentation
    times, a sane duration. Raises ClipError otherwise.

    Frames, duration and rate are those presented (the edit list's hidden lead-in and tail left
    out), as players and FFmpeg-based readers see them. The first keyframe in the file is decoded, from
    a copy of its packet (the demuxer marks the hidden lead-in, where it may sit, as discarded). One
    is enough: what a remux can break is the container (codec parameters, sample
    table, timestamps, edit list), which that picture and the pass over every packet show; the
    packets themselves are the camera's, copied bit for bit (an encoded clip's come from our own
    encoder). Decoding every keyframe cost ~30 ms of CPU a 1080p clip, taken from the decoder that
    feeds detection."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ClipError("clip has no video stream")
            v = c.streams.video[0]
            codec, width, height, tb = v.codec_context.name, v.codec_context.width, v.codec_context.height, v.time_base
            samples = v.frames  # the sample table's count
            packets = [p for p in c.demux(v) if p.size]
            pts = sorted(p.pts for p in packets if p.pts is not None and not p.is_discard)
            if samples and len(packets) < samples:  # the sample table promises data the file lacks
                raise ClipError(f"clip is cut short: {len(packets)} of {samples} frames in the file")
            # the first keyframe, decoded from a copy: the demuxer flags the lead-in "discard", which
            # would make the decoder drop its picture. A decode left unfinished leaks the decoder's
            # pending buffers (measured ~6 kB a clip, ~100 kB on a loaded machine), so it is drained.
            key = next((p for p in packets if p.is_keyframe), None)
            keyframes = 0
            if key is not None:
                cc = av.CodecContext.create(codec, "r")
                cc.extradata = v.codec_context.extradata
                keyframes = len(cc.decode(owned_packet(memoryview(key), key.pts, key.dts, key.time_base, True)))
                keyframes += len(cc.decode(None))  # its picture may wait in the decoder (B-frame delay)
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
