"""The source lines of `edge-agent check`: one bounded read of the camera, and what it says.

It reads the camera the way the daemon does (`AvSource`), but only demuxes while measuring, so
the frame rate it reports is the camera's, not this machine's decoding speed; the packets it keeps
are decoded and searched for QR codes afterwards (the detector line). The read has a deadline: a
camera that never answers is a FAIL line, not a hung terminal.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.commands.check_result import FAIL, PASS, SKIP, Result
from edge_agent.config import Config
from edge_agent.pipeline.keyframe_window import closed_gops, decoded_s, steady_interval

if TYPE_CHECKING:
    from edge_agent.app import Agent

DETECT_FRAMES = 10  # frames searched for QR codes, spread over what was read
KEEP_MAX_BYTES = 64 << 20  # packets kept for decoding (raw 1080p YUYV is 4 MB a frame)
# A frame gap this small (a fraction of the announced interval) is FFmpeg handing over what it
# buffered while probing the stream, not the camera's pace: the rate is measured after it.
BURST_GAP_FRACTION = 0.25
SLOW_FPS_RATIO = 0.8


# --- sampling ------------------------------------------------------------------------------------


@dataclass
class SourceSample:
    """What one bounded read of the source gave: arrival times, keyframe times, kept packets."""

    describe: str
    paced: bool  # a camera, or a file played at its own pace: measured against the clock
    info: Any = None  # StreamInfo once open
    error: str | None = None
    timed_out: bool = False
    stopped: bool = False  # Ctrl-C or SIGTERM ended the reading early
    waited_s: float = 0.0
    open_s: float = 0.0
    read_s: float = 0.0
    count: int = 0
    arrivals: list[float] = field(default_factory=list)
    media_t: list[float] = field(default_factory=list)
    key_t: list[float] = field(default_factory=list)
    order: list[tuple[int | None, bool]] = field(default_factory=list)  # (pts, keyframe) in arrival order
    kept: list[Any] = field(default_factory=list)  # Packets from the first keyframe on, for decoding
    kept_bytes: int = 0
    pictures: list[Any] = field(default_factory=list)  # GrayFrames a camera gives itself (picamera2 lores)
    fps_from: str | None = None  # where the source's frame rate came from (AvSource.fps_from)


def sample_source(agent: Agent, frames: int, seconds: float, stop: threading.Event | None = None) -> SourceSample:
    """Open the source and demux about `frames` packets (at most `seconds` of reading) on a helper
    thread; if it hangs (a camera that never sends, a command that writes nothing) the source is
    interrupted at the deadline and the result says so. `stop` (Ctrl-C) ends the reading the same way,
    keeping what was read."""
    stop = stop or threading.Event()
    from edge_agent.capture.session import SourceError, SourceSilent

    cfg = agent.cfg
    src = agent.source()
    sample = SourceSample(src.describe, src.camera or cfg.source.realtime)
    done = threading.Event()

    def read() -> None:
        started = time.monotonic()
        try:
            sample.info = src.open()
            sample.fps_from = src.fps_from
            opened = time.monotonic()
            sample.open_s = opened - started
            nominal = 1.0 / sample.info.fps if sample.info.fps else 1 / 30
            measured = 0  # packets after FFmpeg's probing burst
            last = None
            for pkt in src.packets():
                if not hasattr(pkt, "keyframe"):  # the camera's own picture of a frame: kept for the detector
                    if len(sample.pictures) < frames:
                        sample.pictures.append(pkt)
                    continue
                now = time.monotonic()
                sample.count += 1
                if last is not None and (measured or now - last >= BURST_GAP_FRACTION * nominal):
                    measured += 1
                last = now
                sample.arrivals.append(now)
                sample.media_t.append(pkt.t)
                sample.order.append((pkt.pts, pkt.keyframe))
                if pkt.keyframe:
                    sample.key_t.append(pkt.t)
                if (pkt.keyframe or sample.kept) and len(sample.kept) < frames and \
                        sample.kept_bytes + pkt.size <= KEEP_MAX_BYTES:
                    sample.kept.append(pkt)
                    sample.kept_bytes += pkt.size
                enough = (measured if sample.paced else sample.count) >= frames
                kept_enough = len(sample.kept) >= min(frames, 3 * DETECT_FRAMES) or \
                    sample.kept_bytes + pkt.size > KEEP_MAX_BYTES
                if (enough and kept_enough) or now - opened > seconds or stop.is_set():
                    break
            sample.read_s = time.monotonic() - opened
        except SourceSilent as exc:  # nothing came in source.open_timeout_s: "no frames", as at the deadline
            sample.error = str(exc)
            sample.timed_out = sample.count == 0
        except SourceError as exc:
            sample.error = str(exc)
        except Exception as exc:  # any library surprise is a FAIL line, not a traceback for the technician
            sample.error = f"{type(exc).__name__}: {exc}"
        finally:
            src.close()
            done.set()

    began = time.monotonic()
    threading.Thread(target=read, name="check-source", daemon=True).start()
    deadline = began + seconds + (cfg.source.open_timeout_s if src.camera else 10.0) + 2.0
    while not done.wait(0.1):
        if stop.is_set() or time.monotonic() > deadline:
            sample.stopped = stop.is_set()
            sample.timed_out = not sample.stopped
            src.interrupt()  # ends a pipe command; network reads end on their own timeout
            done.wait(3.0)
            break
    sample.waited_s = time.monotonic() - began
    return sample


def source_hint(kind: str, path: str, error: str) -> str:
    """The likeliest fix for a source error, in the words a technician searches for."""
    e = error.lower()
    if kind == "pipe" and "cannot start" in e:
        return ("the command is not installed or not on PATH: install it (rpicam-apps on a Raspberry Pi, "
                "gstreamer1.0-tools on a Jetson) or fix source.command")
    if kind == "pipe" and "the command exited" in e:
        return ("the camera command stopped, in its own words above: run source.command by hand to see "
                "all it says, and fix its options or the camera it names")
    if "permission denied" in e:
        if kind == "v4l2":
            return (f"{path}: permission denied -> add the user to the video group "
                    "(sudo usermod -aG video $USER; the service has SupplementaryGroups=video)")
        return "permission denied: make source.path readable by the service user"
    if "no such device" in e:
        return "the camera went away: check the USB cable and power, then `v4l2-ctl --list-devices`"
    if "no such file" in e:
        if kind == "v4l2":
            return (f"no camera at {path}: list cameras with `v4l2-ctl --list-devices` and fix source.path "
                    "(/dev/v4l/by-id/... keeps the name across re-plugging)")
        return f"{path} does not exist: fix source.path"
    if "busy" in e:
        return f"another program holds the camera: find it with `fuser -v {path}` and stop it"
    if "401" in e or "unauthorized" in e:
        return "the camera refused the login: check user:password in source.path"
    if "404" in e or "not found" in e:
        return "the camera has no stream at that URL: check the stream path in the camera's manual"
    if "connection refused" in e:
        return "nothing listens at that address: check the camera's IP address and port (RTSP: 554)"
    if "timed out" in e or "timeout" in e or "immediate exit" in e or "unreachable" in e:
        return "the camera does not answer: check its power, the network cable, its IP address and the firewall"
    if "invalid argument" in e and kind == "v4l2":
        return (f"the camera does not offer this mode: list modes with `v4l2-ctl -d {path} --list-formats-ext` "
                "and fix source.options (input_format, video_size, framerate)")
    if "invalid data" in e:
        return ("FFmpeg cannot read this stream: check source.input_format (h264, mjpeg) "
                "against what the camera or command really sends")
    return "check source.path / source.command and that the camera is connected and powered"


def check_source(cfg: Config, sample: SourceSample, seconds: float) -> Result:
    s = cfg.source
    where = sample.describe
    if sample.stopped and (sample.info is None or sample.count == 0):
        return Result("source", SKIP, f"{where}: stopped by request before a frame came",
                      "run `edge-agent check` again")
    if sample.info is None or sample.count == 0:
        if sample.timed_out or (sample.error is None and sample.count == 0):
            waited = f"{sample.waited_s:.0f} s"
            hint = (f"no frames in {waited} -> check the camera cable and run source.command by hand to see its errors"
                    if s.kind == "pipe" else f"no frames in {waited} -> check the cable / source.path")
            return Result("source", FAIL, f"{where}: no frames in {waited}", hint)
        return Result("source", FAIL, sample.error or f"{where}: cannot open",
                      source_hint(s.kind, str(s.path), sample.error or ""))
    info = sample.info
    data: dict[str, Any] = {"codec": info.codec, "width": info.width, "height": info.height,
                            "announced_fps": info.fps, "frames": sample.count, "open_s": round(sample.open_s, 2)}
    head = f"{where}: {info.codec} {info.width}x{info.height}"
    fps = _measured_fps(sample)
    data["fps"] = None if fps is None else round(fps, 2)
    if sample.paced:
        rate = f"{fps:.1f} fps measured over {sample.count} frames" if fps else f"{sample.count} frame(s), rate unknown"
        if sample.fps_from in ("sps", "config", "measured", "assumed"):
            rate += f" (no timestamps in the stream: stamped at {info.fps:g} fps from {sample.fps_from})"
    else:
        span = max(sample.media_t) - min(sample.media_t)
        speed = span / sample.read_s if sample.read_s > 0 else 0.0
        rate = f"{fps:.1f} fps (file), read at {speed:.0f}x real time" if fps else f"{sample.count} frame(s)"
    detail = f"{head}, {rate}, opened in {sample.open_s:.1f} s" + (", stopped by request" if sample.stopped else "")
    gop = _keyframe_interval(sample)
    data["keyframe_interval_s"] = gop
    if info.codec == "h264":
        if gop is not None:
            detail += f", a keyframe every {gop:.1f} s"
            if gop > 2.0:
                detail += " (set the camera's keyframe/I-frame interval to 1 s for predictable pre-roll)"
            if sample.pictures:  # the camera's own pictures go to detection: its video is not decoded at all
                data["decoded_of_interval_s"] = None
            else:
                detail += _decoded_part(sample, cfg.detector.max_blind_s, data)
        elif not sample.key_t:
            detail += ", no keyframe seen (set the camera's keyframe/I-frame interval to 1 s)"
    if sample.error:  # frames came, then the stream broke
        return Result("source", FAIL, f"{detail}; then: {sample.error}",
                      "the stream broke while reading: check the cable, power and network", data)
    if sample.paced and fps and info.fps and fps < SLOW_FPS_RATIO * info.fps:
        return Result("source", FAIL, f"{detail}; the camera announces {info.fps:.1f} fps", (
            "frames arrive slower than announced: in low light many webcams lower their rate (turn off "
            "exposure_dynamic_framerate with v4l2-ctl), the USB bus may be shared, or the network is saturated"), data)
    return Result("source", PASS, detail, data=data)


def _measured_fps(sample: SourceSample) -> float | None:
    """Frames per second of capture time, from the source's stamps (a bursty pipe's arrival times say
    nothing about the camera). Files: the recorded rate."""
    if not sample.paced and sample.info.fps:  # a file's rate is what it was recorded at
        return float(sample.info.fps)
    t = sorted(sample.media_t)  # decode order is not presentation order when there are B-frames
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else None


def _decoded_part(sample: SourceSample, max_blind_s: float, data: dict[str, Any]) -> str:
    """How much of each keyframe interval detection decodes, by the decode stage's own rules
    (pipeline/keyframe_window.py), and why all of it when max_blind_s asks for less."""
    steady = steady_interval(sample.key_t)
    closed = closed_gops(sample.order)
    decoded = decoded_s(steady, max_blind_s) if steady is not None and closed else None
    data["decoded_of_interval_s"] = decoded
    if decoded is not None:
        return f"; detection decodes the first {decoded:.2f} s of each (detector.max_blind_s {max_blind_s:g})"
    if max_blind_s <= 0:
        return ""
    if not closed:
        return "; detection decodes every frame (open GOPs: a picture shown before the keyframe it follows)"
    if steady is None:
        return "; detection decodes every frame (keyframes at an unsteady interval)"
    return ""  # an interval no longer than max_blind_s: nothing to leave out


def _keyframe_interval(sample: SourceSample) -> float | None:
    k = sample.key_t
    if len(k) < 2 or len(k) == sample.count:  # intra-only (MJPEG, raw): no interval to speak of
        return None
    return round((k[-1] - k[0]) / (len(k) - 1), 2)
