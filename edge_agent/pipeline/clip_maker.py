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

A full disk is the disk's fault, not an encoder's: the clip fails at once with that cause (`DiskFull`)
and its read goes out without video. An encoder that fails (no thread left under a task limit, an
absent device, a driver error) is not given up: the clip is tried with the next encoder of
`clip.encoders`, and the failed one waits a back-off during which it is tried only after the others.
A clip goes without video only when every encoder failed for it; the maker's status says so until an
encode succeeds again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from edge_agent import const
from edge_agent.capture import encoders as enc
from edge_agent.capture.media import Packet, StreamInfo, open_decoder, owned_packet, to_av_packet
from edge_agent.config import ClipConfig
from edge_agent.delivery import contract
from edge_agent.delivery.spool_files import is_disk_full, sha256_file
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import Finished
from edge_agent.pipeline.edit_list import EditListError, end_presentation
from edge_agent.pipeline.ring import half_frame

log = logging.getLogger(__name__)

_OUT_TIME_BASE = Fraction(1, 90000)  # MPEG's 90 kHz clock: exact for 24/25/30/60 fps and NTSC rates
# What one encode attempt may raise besides FFmpeg's errors: a full disk or a closed file (OSError), no
# thread left under a task limit (RuntimeError "can't start new thread"), no memory, a bad option value.
_ENCODE_FAULTS = (av.error.FFmpegError, OSError, RuntimeError, MemoryError, ValueError)


class ClipError(Exception):
    """No valid clip could be made; the CID is still delivered with this as `clip.error`."""


# clip.error of a recording a stop had no time left for (replay's exit code tells it from a failure)
STOP_BUDGET_ERROR = "stopping: the stop budget ran out before this clip was made"


class _Hurry(Exception):
    """A re-encode given up for a remux (the stage fell behind, or a stop began): `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# what make() asks while it works: why to remux instead of re-encoding now ("stopping", "behind"), or None
Hurry = Callable[[], str | None]


class OutOfTime(ClipError):
    """A stop's deadline passed while the clip was being encoded: not the encoder's fault."""

    def __init__(self) -> None:
        super().__init__(f"{STOP_BUDGET_ERROR}: video dropped")


@dataclass
class ClipResult:
    info: contract.ClipInfo
    path: Path
    remuxed: bool
    encoder: str | None
    start_t: float = 0.0  # capture time of the first presented frame: clip time 0


@dataclass(frozen=True)
class EncoderStatus:
    """One encoder of `clip.encoders` as this device found it."""

    name: str
    usable: bool  # False: not in this build, or its driver is absent; never tried
    failures: int  # failed attempts in a row (0: the last one worked, or none yet)
    last_error: str | None
    retry_in_s: float  # > 0: backing off, tried only after the others until then


@dataclass(frozen=True)
class MakerStatus:
    encoders: tuple[EncoderStatus, ...]
    # why the last clip that needed an encoder got none (every encoder failed); None once one works
    encoding_error: str | None


@dataclass
class _Health:
    failures: int = 0
    last_error: str | None = None
    retry_at: float = 0.0  # monotonic


class ClipMaker:
    """Stateless per clip except for each encoder's health: failures in a row and its back-off.

    Only the clip worker's thread makes clips; `status()` may be read from any thread."""

    def __init__(self, cfg: ClipConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self._metrics = metrics
        self._health: dict[str, _Health] = {}
        self._encoding_error: str | None = None
        self._lock = threading.Lock()

    def configure(self, cfg: ClipConfig) -> None:
        """Clip worker's thread, between two clips: the next clip is made with `cfg`."""
        self.cfg = cfg

    def status(self) -> MakerStatus:
        now = time.monotonic()
        with self._lock:
            encoders = tuple(
                EncoderStatus(name, enc.usable(name), h.failures, h.last_error, round(max(0.0, h.retry_at - now), 1))
                for name in self.cfg.encoders for h in [self._health.get(name, _Health())])
            return MakerStatus(encoders, self._encoding_error)

    def make(self, rec: Finished, out_path: Path, deadline: float | None = None,
             hurry: Hurry = lambda: None) -> ClipResult:
        """The clip of `rec` at `out_path`; an encode still running at `deadline` (monotonic, a stop's)
        is given up with OutOfTime. While `hurry()` gives a reason, an H.264 recording that clip.width,
        height or fps would re-encode is remuxed instead (its clip says `not_reencoded`), an encode in
        progress included."""
        packets = _usable(rec.packets)
        if not packets:
            raise ClipError("no decodable video in the recording (no keyframe)")
        info = packets[0].stream
        # the presented start: the wanted one, or the first frame there is when the video began later.
        # Both edges take the frame nearest to them (half a frame either way), so a float rounding of
        # `detected - pre_roll` never adds or drops a frame, nor keeps a GOP that FFmpeg's reader drops
        half = half_frame(packets)
        start_t = max(rec.start_t, packets[0].t) - half
        end_t = rec.end_t - half
        shown = [p for p in packets if start_t <= p.t < end_t]
        if not shown:
            raise ClipError("no frame in the clip's time range")
        first = min(shown, key=lambda p: p.t)
        not_reencoded = hurry() if info.remuxable and self.cfg.reencode else None
        remux = info.remuxable and (not self.cfg.reencode or not_reencoded is not None)
        encoder: str | None = None
        causes: list[str] = []
        if not remux:
            try:
                encoder, clip = self._encode(packets, info, out_path, first.t, end_t, causes, deadline,
                                             hurry if info.remuxable else lambda: None)
            except _Hurry as exc:
                out_path.unlink(missing_ok=True)
                not_reencoded, remux = exc.reason, True
        if remux:
            try:
                self._remux(packets, info, out_path, first.pts)
                if any(p.t >= end_t for p in packets):  # a reference picture the last B-frames need
                    end_presentation(out_path, self._shown_s(shown, info, first))
                clip = validate(out_path, len(shown))
            except (av.error.FFmpegError, OSError, ClipError, EditListError) as exc:
                out_path.unlink(missing_ok=True)
                _raise_if_disk_full(exc, out_path)
                # a resolution change or a timestamp jump inside the recording: copying packets cannot
                # make a valid MP4 of it, decoding and encoding on the capture times can
                log.warning("remux failed, re-encoding the clip error=%s", exc)
                causes.append(f"remux: {exc}")
                remux, not_reencoded = False, None
                encoder, clip = self._encode(packets, info, out_path, first.t, end_t, causes, deadline)
        clip.not_reencoded = not_reencoded if remux else None
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

    def _order(self) -> list[str]:
        """The usable encoders in config order, those backing off after the others, soonest retry first
        (still tried: a clip goes without video only when every one failed for it)."""
        now = time.monotonic()
        names = [n for n in self.cfg.encoders if enc.usable(n)]
        with self._lock:
            return sorted(names, key=lambda n: max(0.0, self._health.get(n, _Health()).retry_at - now))

    def _encode(self, packets: list[Packet], info: StreamInfo, out_path: Path, t0: float, end_t: float,
                causes: list[str], deadline: float | None = None,
                hurry: Hurry = lambda: None) -> tuple[str, contract.ClipInfo]:
        """Encode with each encoder in turn until one gives a valid clip; ClipError naming every
        encoder's error when none does."""
        names = self._order()
        if not names:
            causes.append(f"none of clip.encoders ({', '.join(self.cfg.encoders)}) exists in this build "
                          "(or its driver is absent)")
        for name in names:
            try:
                frames = self._encode_with(name, packets, info, out_path, t0, end_t, deadline, hurry)
                clip = validate(out_path, frames)
            except (OutOfTime, _Hurry):
                out_path.unlink(missing_ok=True)
                raise
            except (*_ENCODE_FAULTS, ClipError) as exc:
                out_path.unlink(missing_ok=True)
                _raise_if_disk_full(exc, out_path)  # the disk's fault, not the encoder's: no other encoder helps
                error = f"{type(exc).__name__}: {exc}" if isinstance(exc, RuntimeError | MemoryError) else str(exc)
                causes.append(f"{name}: {error}")
                self._failed(name, error)
                continue
            self._worked(name)
            return name, clip
        error = "no H.264 encoder in clip.encoders could make the clip: " + "; ".join(causes)
        with self._lock:
            self._encoding_error = error
        raise ClipError(error)

    def _failed(self, name: str, error: str) -> None:
        with self._lock:
            h = self._health.setdefault(name, _Health())
            again = h.last_error == error
            h.failures += 1
            h.last_error = error
            backoff = min(const.ENCODER_RETRY_CAP_S, const.ENCODER_RETRY_S * 2 ** (h.failures - 1))
            h.retry_at = time.monotonic() + backoff
        if self._metrics is not None:
            self._metrics.clip_encoder_failures.labels(encoder=name).inc()
        # an absent device fails the same way at every retry: one warning, then a quieter line
        (log.info if again else log.warning)(
            "encoder failed encoder=%s failures=%d error=%s (trying the next in clip.encoders; this one again "
            "after %.0f s)", name, h.failures, error, backoff)

    def _worked(self, name: str) -> None:
        with self._lock:
            h = self._health.get(name)
            recovered = h is not None and h.failures > 0
            if recovered:
                self._health[name] = _Health()
            was_down, self._encoding_error = self._encoding_error, None
        if recovered:
            log.info("encoder works again encoder=%s", name)
        if was_down:
            log.info("clip encoding works again encoder=%s", name)

    def _encode_with(self, name: str, packets: list[Packet], info: StreamInfo, out_path: Path, t0: float,
                     end_t: float, deadline: float | None = None, hurry: Hurry = lambda: None) -> int:
        """One attempt with encoder `name`; the number of frames given to it."""
        decoder = open_decoder(info)
        width, height = self._size(info)
        fps = self.cfg.fps or info.fps or 30.0
        # frames closer than this are one moment: the clip.fps cap, else half the output's frame interval
        # (a live clock re-anchored to arrival can give two frames capture times ms apart; on one encoder
        # tick the muxer refuses the second one's timestamp, and the whole clip with it)
        min_step = 1.0 / self.cfg.fps if self.cfg.fps else 0.5 / fps
        # decode on capture times, not the stream's own timestamps: those may jump or repeat (a camera
        # that restarted its clock), which is why a recording comes here instead of being remuxed
        packets = [dataclasses.replace(p, pts=round((p.t - t0) / info.time_base), dts=None) for p in packets]
        times = {p.pts: p.t for p in packets}
        count = 0
        with av.open(str(out_path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = self._open_encoder(out, name, width, height, fps)
            last_t = -1.0
            for frame in _decode_all(decoder, packets, info):
                if deadline is not None and time.monotonic() >= deadline:
                    raise OutOfTime()
                if (reason := hurry()) is not None:
                    raise _Hurry(reason)
                t = times.get(frame.pts, 0.0) - t0 if frame.pts is not None else last_t + 1 / fps
                if t < 0 or t >= end_t - t0 or (last_t >= 0 and t - last_t < min_step - 1e-6) or t <= last_t:
                    continue
                last_t = t
                out_frame = frame.reformat(width=width, height=height, format="yuv420p")
                out_frame.pts = round(t / _OUT_TIME_BASE)
                out_frame.time_base = _OUT_TIME_BASE
                count += 1
                for pkt in stream.encode(out_frame):
                    out.mux(pkt)
            for pkt in stream.encode(None):
                out.mux(pkt)
        return count

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


class DiskFull(ClipError):
    """The clip's file could not be written: its disk is full. Not an encoder's fault: the read goes out
    without video and no encoder is backed off for it."""


def _raise_if_disk_full(exc: BaseException, out_path: Path) -> None:
    if is_disk_full(exc):
        raise DiskFull(f"disk full writing the clip in {out_path.parent} ({getattr(exc, 'strerror', None) or exc}): "
                       "free space on the spool's disk, or lower spool.max_bytes") from exc


def _usable(packets: Sequence[Packet]) -> list[Packet]:
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


def validate(path: Path, expected_frames: int | None = None) -> contract.ClipInfo:
    """Open the written clip like a receiver would: an H.264 stream, the frames it presents all in
    the file (as many as `expected_frames`, what the maker put in, when given; else covering the
    duration its header declares), a first keyframe that decodes, strictly increasing presentation
    times, a sane duration. Raises ClipError otherwise.

    Frames, duration and rate are those presented (the edit list's hidden lead-in and tail left
    out), as players and FFmpeg-based readers see them. The sample table is not the measure: FFmpeg's
    MP4 reader drops from its index a lead-in that an edit list starting on a keyframe never needs, so
    the file holds more samples than a reader returns, and that clip is whole. The first keyframe in the
    file is decoded, from a copy of its packet (the demuxer marks the hidden lead-in, where it may sit,
    as discarded). One is enough: what a remux can break is the container (codec parameters, sample
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
            declared = v.duration  # the edit list's (presented) duration, in tb
            packets = [p for p in c.demux(v) if p.size]
            pts = sorted(p.pts for p in packets if p.pts is not None and not p.is_discard)
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
    if expected_frames is not None and len(pts) < expected_frames:
        raise ClipError(f"clip is cut short: {len(pts)} of {expected_frames} frames presented")
    if declared and duration < float(declared * tb) - 1.5 * frame_s:  # the header promises data the file lacks
        raise ClipError(f"clip is cut short: {duration:.3f} s of the {float(declared * tb):.3f} s it declares "
                        f"presented ({len(pts)} frames)")
    return contract.ClipInfo(
        duration_s=round(duration, 3), frames=len(pts), fps=round(len(pts) / duration, 3) if duration else None,
        width=width, height=height, codec=codec, size_bytes=path.stat().st_size, sha256=sha256_file(path),
    )
