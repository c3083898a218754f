"""detector.max_blind_s: which packets of a keyframe interval are decoded for detection.

The decisions of pipeline/keyframe_window.py packet by packet, and the decode stage asking for them;
tests/test_max_blind_pipeline.py runs it in the pipeline, on a camera and on a replayed file."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from edge_agent.capture.media import Packet
from edge_agent.config import parse_config
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import FrameSlot
from edge_agent.pipeline.decode import DecodeStage
from edge_agent.pipeline.keyframe_window import INTERVALS, KeyframeWindow, closed_gops, steady_interval
from edge_agent.stage import Backpressure

FPS = 30


def packets(seconds: float, gop_s: float = 1.0, fps: int = FPS, start: float = 0.0,
            stream: object = None) -> list[Packet]:
    """A camera's packets without B-frames: a keyframe every gop_s, capture times at the frame rate."""
    per_gop, first = round(gop_s * fps), round(start * fps)
    return [Packet(b"", first + n, first + n, n % per_gop == 0, start + n / fps, start + n / fps,
                   stream)  # type: ignore[arg-type]
            for n in range(round(seconds * fps))]


def decided(window: KeyframeWindow, pkts: list[Packet], max_blind_s: float) -> list[tuple[float, bool]]:
    return [(p.t, window.decode(p, lambda: max_blind_s)) for p in pkts]


def blind_spans(decisions: list[tuple[float, bool]]) -> list[float]:
    """The stretches of capture time between two decoded packets."""
    decoded = [t for t, d in decisions if d]
    return [b - a for a, b in zip(decoded, decoded[1:], strict=False)]


def test_a_steady_camera_decodes_the_start_of_each_interval_and_is_blind_at_most_max_blind_s() -> None:
    got = decided(KeyframeWindow(), packets(10), 0.5)
    settled = [(t, d) for t, d in got if t >= INTERVALS]  # the interval is known from the (INTERVALS+1)th keyframe
    assert all(d for t, d in got if t < INTERVALS)  # until then, everything
    for k in range(INTERVALS, 10):
        interval = [(t, d) for t, d in settled if k <= t < k + 1]
        assert [d for _, d in interval] == [True] * 16 + [False] * 14, k  # 0 .. 0.5 s decoded, the rest not
    assert max(blind_spans(got)) <= 0.5 + 1e-9


def test_nothing_is_skipped_with_max_blind_s_0_or_an_interval_no_longer_than_it() -> None:
    assert all(d for _, d in decided(KeyframeWindow(), packets(8), 0.0))
    assert all(d for _, d in decided(KeyframeWindow(), packets(8, gop_s=0.5), 0.5))


def test_keyframes_at_an_unsteady_interval_are_decoded_whole() -> None:
    """A camera that stretches its interval (a still scene): the end of an interval cannot be foreseen."""
    window = KeyframeWindow()
    pkts, start = [], 0.0
    for gop in (1.0, 2.0, 1.0, 1.5, 1.0, 3.0, 1.0):
        pkts += packets(gop, gop_s=gop, start=start)
        start += gop
    assert all(d for _, d in decided(window, pkts, 0.5))


def test_a_late_keyframe_ends_skipping_until_the_interval_is_steady_again() -> None:
    window = KeyframeWindow()
    steady = packets(6)
    late = packets(1.5, gop_s=1.5, start=6.0)  # this interval is 1.5 s: blind from 6.5 s to its end at 7.5 s
    after = packets(6, start=7.5)
    got = decided(window, steady + late + after, 0.5)
    assert not any(d for t, d in got if 6.5 < t < 7.5)
    # 7.5 s onwards: the last intervals disagree (1.5 s among 1 s) until INTERVALS steady ones again
    assert all(d for t, d in got if 7.5 <= t < 7.5 + INTERVALS)
    assert not all(d for t, d in got if t >= 7.5 + INTERVALS)


def b_frame_packets(seconds: int, open_gop: bool = False) -> list[Packet]:
    """x264's pattern at 30 fps, a keyframe a second, in decode order: I0 P3 B1 B2 P6 B4 B5 ... P27 B25 B26
    P29 B28 (closed: nothing after a keyframe is shown before it). Open: the interval's last two pictures
    are B-frames coded after the next keyframe (... P27 B25 B26 I30 B28 B29 P33 ...), leading it."""
    shown = {n: Packet(b"", n, None, n % FPS == 0, n / FPS, n / FPS, None)  # type: ignore[arg-type]
             for n in range(seconds * FPS)}
    total = seconds * FPS
    order: list[int] = []
    for g in range(0, total, FPS):
        if g == 0 or not open_gop:
            order.append(g)  # open: the interval before placed this keyframe, ahead of its leading pictures
        prev = g
        for a in [*range(g + 3, g + FPS - 2, 3), *([] if open_gop else [g + FPS - 1])]:
            order += [a, *range(prev + 1, a)]
            prev = a
        if open_gop:
            order += [*([g + FPS] if g + FPS < total else []), g + FPS - 2, g + FPS - 1]
    return [shown[n] for n in order]


@pytest.mark.parametrize("max_blind_s", [0.5, 0.45])
def test_b_frames_of_closed_gops_are_skipped_and_every_picture_shown_before_the_window_end_is_decoded(
        max_blind_s: float) -> None:
    """0.45: the window ends at frame 16.5, between an anchor (P18) coded before the B-frames (B16, B17)
    shown before it: P18 is decoded for them."""
    pkts = b_frame_packets(8)
    got = decided(KeyframeWindow(), pkts, max_blind_s)
    decoded = {round(t * FPS) for t, d in got if d}
    shown = math.floor((1 - max_blind_s) * FPS)  # the last frame shown before the window's end
    for k in range(INTERVALS, 8):
        assert set(range(k * FPS, k * FPS + shown + 1)) <= decoded, k  # all decoded
        assert len(decoded & set(range(k * FPS, (k + 1) * FPS))) <= shown + 4, k  # the rest (but a B-run) not
    # skipping runs in decode order from one packet to the next keyframe: a decoded B-frame's references
    # (the anchors shown before and after it) are decoded too
    anchors = [n for n in range(8 * FPS) if n % FPS % 3 == 0 or n % FPS == FPS - 1]
    for n in decoded - set(anchors):
        assert max(a for a in anchors if a < n) in decoded and min(a for a in anchors if a > n) in decoded, n
    assert max(b - a for a, b in pairwise(sorted(decoded))) <= max_blind_s * FPS + 1  # blind <= max_blind_s


def test_an_open_gop_is_never_skipped() -> None:
    """A picture after a keyframe in decode order but shown before it may reference the interval before."""
    pkts = b_frame_packets(8, open_gop=True)
    assert all(d for _, d in decided(KeyframeWindow(), pkts, 0.5))
    assert not closed_gops((p.pts, p.keyframe) for p in pkts)
    assert closed_gops((p.pts, p.keyframe) for p in b_frame_packets(8))
    assert closed_gops((p.pts, p.keyframe) for p in packets(8))


def test_a_new_session_or_a_timeline_that_starts_again_learns_the_interval_afresh() -> None:
    window = KeyframeWindow()
    decided(window, packets(6), 0.5)
    window.reset()
    assert all(d for t, d in decided(window, packets(3), 0.5))  # fewer keyframes than INTERVALS + 1 again
    window = KeyframeWindow()
    decided(window, packets(6, start=100.0), 0.5)
    assert all(d for t, d in decided(window, packets(3, start=0.0), 0.5))  # capture time went back


@pytest.mark.parametrize(("watched", "undecoded"), [(False, 14), (True, 0)])
def test_while_a_live_view_is_watched_every_frame_is_decoded(watched: bool, undecoded: int) -> None:
    """The camera's packets as the capture thread offers them to the decode stage (nothing consumes them:
    its inbox only fills): 3 s to learn the interval, then one interval of which 14 frames go undecoded."""
    cfg = parse_config("source:\n  kind: pipe\n  command: camera\ndetector:\n  max_blind_s: 0.5\n", env={})
    metrics = Metrics(process=False)
    stage = DecodeStage(FrameSlot(lambda: Backpressure.DROP, metrics), metrics, lambda: Backpressure.DROP, cfg)
    stage.watch(watched)  # the live view says so
    for pkt in packets(4.0, stream=object()):
        stage.offer(pkt)
    assert stage.status().undecoded == undecoded
    assert stage.status().dropped == 0


def test_the_rule_check_and_the_window_share_for_a_steady_interval() -> None:
    assert steady_interval([0.0, 1.0, 2.0, 3.02]) == 1.0  # a pipe camera's few ms of jitter: the shortest
    assert steady_interval([0.0, 1.0, 3.0]) is None  # stretched in a still scene
    assert steady_interval([5.0]) is None  # one keyframe: no interval yet
