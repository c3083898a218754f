"""Capture times for streams without timestamps: frame n at n / fps, anchored to the earliest
arrivals and slewed, never jumping with the pipe's bursts; a real gap re-anchors. The frame rate
comes from the H.264 SPS, or is measured from bursty arrivals. Encoders a build lacks are skipped."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import av
import pytest

from edge_agent.capture import encoders, h264
from edge_agent.capture.clock import FrameClock, measure_fps, snap_fps
from tests.media_factory import make_video

FPS = 30.0


def bursty(frames: int, burst: int = 10, start: float = 0.0, jitter_ms: float = 2.0) -> list[float]:
    """Arrivals of a 30 fps camera whose frames come `burst` at a time, when the burst's last is captured."""
    out = []
    for i in range(frames):
        last = (i // burst + 1) * burst - 1
        out.append(start + last / FPS + ((i * 7919) % 10) * jitter_ms / 10000)
    return out


def spacing_ms(ts: list[float]) -> list[float]:
    return [(b - a) * 1000 for a, b in zip(ts, ts[1:], strict=False)]


@pytest.mark.parametrize("burst", [1, 3, 10, 15])
def test_bursts_are_stamped_at_the_frame_rate(burst: int) -> None:
    clock = FrameClock(FPS)
    arrivals = bursty(900, burst)
    ts = [clock.stamp(a) for a in arrivals]
    gaps = spacing_ms(ts)
    assert statistics.median(gaps) == pytest.approx(1000 / FPS, abs=0.01)
    assert min(gaps) >= 1000 / FPS * 0.9 - 1e-6 and max(gaps) <= 1000 / FPS * 1.1 + 1e-6
    assert clock.reanchors == 0
    # anchored to arrival: no stamp after its frame arrived (beyond the slew), none far before it
    lag = [a - t for a, t in zip(arrivals[300:], ts[300:], strict=True)]
    assert min(lag) > -0.005 and max(lag) < burst / FPS + 0.01


def test_a_probing_backlog_is_stamped_back_in_its_own_time() -> None:
    """FFmpeg hands over the frames it buffered while probing all at once: priming on the read-ahead
    places them before the first arrival instead of in the future."""
    arrivals = [2.0] * 40 + [2.0 + k / FPS for k in range(1, 31)]
    clock = FrameClock(FPS)
    ts = clock.prime(arrivals)
    assert spacing_ms(ts) == pytest.approx([1000 / FPS] * (len(ts) - 1))
    assert ts[-1] == pytest.approx(arrivals[-1], abs=1e-6) and ts[0] < arrivals[0]
    nxt = clock.stamp(arrivals[-1] + 1 / FPS)
    assert nxt - ts[-1] == pytest.approx(1 / FPS, abs=1e-6)


def test_a_gap_with_lost_frames_re_anchors_once() -> None:
    clock = FrameClock(FPS)
    arrivals = bursty(300, 10) + bursty(300, 10, start=10.0 + 3.0)  # 3 s with nothing, frames lost
    ts = [clock.stamp(a) for a in arrivals]
    assert clock.reanchors == 1
    assert ts[300] == pytest.approx(arrivals[300]) and all(b > a for a, b in zip(ts, ts[1:], strict=False))


def test_a_slightly_wrong_rate_is_followed_without_bursts_of_error() -> None:
    clock = FrameClock(30.0)  # the camera really runs at 29.97
    arrivals = [i / 29.97 for i in range(3000)]
    ts = [clock.stamp(a) for a in arrivals]
    assert abs(ts[-1] - arrivals[-1]) < 0.01 and clock.reanchors == 0


def test_rate_measured_from_bursty_arrivals() -> None:
    assert measure_fps(bursty(75, 10, start=5.0)) == 30.0
    assert measure_fps([5.0] * 40 + bursty(60, 10, start=5.0)) == 30.0  # after a probing backlog
    assert measure_fps([i / 25 for i in range(60)]) == 25.0
    assert measure_fps([1.0, 1.0]) is None
    assert snap_fps(29.5) == 29.97 and snap_fps(17.0) == 17.0


def test_sps_frame_rate(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", seconds=1, fps=25, size=(160, 120))
    with av.open(str(video)) as c:
        extradata = bytes(c.streams.video[0].codec_context.extradata)  # avcC
        bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", c.streams.video[0])
        first = bytes(bsf.filter(next(c.demux(video=0)))[0])  # Annex-B keyframe with in-band SPS
    assert h264.stream_fps(extradata) == 25.0
    assert h264.stream_fps(None, first) == 25.0
    assert h264.stream_fps(b"\x00\x00\x00\x01\x67\x42") is None  # truncated: no rate, no exception
    assert h264.stream_fps(None) is None


def test_an_encoder_missing_from_this_build_is_skipped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    encoders.usable.cache_clear()
    assert not encoders.usable("no_such_encoder")
    assert encoders.usable("libx264")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("not in this build" in r.message for r in caplog.records)


def test_a_timed_camera_stream_learns_how_late_its_anchor_was_without_moving_its_clock() -> None:
    """FFmpeg probes an MPEG-TS pipe for 0.7 s and then hands those frames over at once: the first one,
    the anchor, arrived 0.7 s after it was captured. `t` keeps the stream's own spacing (clips need it
    consistent, and it never jumps back); `lag` says how late it runs, for the wall-clock metadata."""
    from fractions import Fraction

    from edge_agent.capture.clock import PtsClock

    clock = PtsClock(Fraction(1, 90000), arrival_anchored=True)
    captured = [i / FPS for i in range(300)]
    arrivals = [max(0.7, c + 0.004) for c in captured]  # the probed stretch arrives at 0.7 s, then on time
    ts = [clock.stamp(round(c * 90000), a) for c, a in zip(captured, arrivals, strict=True)]
    assert spacing_ms(ts) == pytest.approx([1000 / FPS] * 299, abs=0.02)  # the stream's own spacing
    assert clock.lag == pytest.approx(0.7 - 0.004, abs=0.002)
    assert all(abs(t - clock.lag - c) < 0.005 for t, c in zip(ts, captured, strict=True))  # capture time, minus ~4 ms
