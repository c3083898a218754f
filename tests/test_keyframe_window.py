"""detector.max_blind_s: which packets of a camera's keyframe interval are decoded for detection.

The decisions of pipeline/keyframe_window.py packet by packet, and the decode stage asking for them;
tests/test_max_blind_camera.py runs it in the pipeline on a live camera."""

from __future__ import annotations

import pytest

from edge_agent.capture.media import Packet
from edge_agent.config import parse_config
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import FrameSlot
from edge_agent.pipeline.decode import DecodeStage
from edge_agent.pipeline.keyframe_window import INTERVALS, KeyframeWindow, steady_interval
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


def test_b_frames_are_never_skipped() -> None:
    """Presentation order differing from decode order: a picture after a keyframe may need one before it."""
    pkts = packets(8)
    for a, b in zip(pkts[1::3], pkts[2::3], strict=False):
        if not (a.keyframe or b.keyframe):
            a.pts, b.pts = b.pts, a.pts
    assert all(d for _, d in decided(KeyframeWindow(), pkts, 0.5))


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
    stage = DecodeStage(FrameSlot(lambda: Backpressure.DROP, metrics), metrics, lambda: 10.0,
                        lambda: Backpressure.DROP, cfg, watched=lambda: watched)
    for pkt in packets(4.0, stream=object()):
        stage.offer(pkt)
    assert stage.status().undecoded == undecoded
    assert stage.status().dropped == 0


def test_the_rule_check_and_the_window_share_for_a_steady_interval() -> None:
    assert steady_interval([0.0, 1.0, 2.0, 3.02]) == 1.0  # a pipe camera's few ms of jitter: the shortest
    assert steady_interval([0.0, 1.0, 3.0]) is None  # stretched in a still scene
    assert steady_interval([5.0]) is None  # one keyframe: no interval yet
