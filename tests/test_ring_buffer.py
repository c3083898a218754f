"""The ring holds recent compressed video bounded in seconds and bytes, and recordings cut from it
start on a keyframe at or before the wanted start."""

from __future__ import annotations

import math

from edge_agent.capture.media import Packet
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import Finished
from edge_agent.pipeline.ring import RingBuffer
from tests.metric_values import value

FPS = 30
GOP = 30  # a keyframe every second


def pkt(i: int, size: int = 1000) -> Packet:
    return Packet(b"\0" * size, i, i, i % GOP == 0, i / FPS, 1000.0 + i / FPS, stream=None)  # type: ignore[arg-type]


def make(keep_s: float = 9.0, max_bytes: int = 1 << 30) -> tuple[RingBuffer, list[Finished], Metrics]:
    """A ring whose detection is never behind: a recording is handed over once its packets are in."""
    done: list[Finished] = []
    m = Metrics()
    ring = RingBuffer(keep_s, max_bytes, done.append, m)
    ring.analysed(math.inf)
    return ring, done, m


def test_ring_is_bounded_in_seconds_by_whole_gops() -> None:
    ring, _, _ = make(keep_s=3.0)
    for i in range(30 * FPS):
        ring.offer(pkt(i))
    assert 3.0 <= ring.status().span_s < 3.0 + 1.0 + 1 / FPS  # at most one extra GOP kept
    first = ring._packets[0]
    assert first.keyframe  # never starts mid-GOP


def test_ring_is_bounded_in_bytes_and_counts_evictions() -> None:
    ring, _, m = make(keep_s=1000.0, max_bytes=50_000)
    for i in range(10 * FPS):
        ring.offer(pkt(i, size=1000))
    assert ring.status().bytes <= 50_000
    assert value(m, "edge_agent_ring_evicted_over_cap_total") > 0


def test_recording_starts_on_last_keyframe_at_or_before_start() -> None:
    ring, done, _ = make()
    for i in range(int(6.5 * FPS)):
        ring.offer(pkt(i))
    rec = ring.start_recording("ev", start_t=4.2, end_t=7.0)
    assert rec.packets[0].keyframe and rec.packets[0].t == 4.0
    assert rec.truncated_start is None
    for i in range(int(6.5 * FPS), 9 * FPS):
        ring.offer(pkt(i))
    assert [d.key for d in done] == [rec.key]
    assert rec.packets[-1].t <= 7.0 and rec.packets[-1].t > 7.0 - 2 / FPS


def test_recording_exactly_on_a_keyframe_starts_there() -> None:
    ring, _, _ = make()
    for i in range(5 * FPS):
        ring.offer(pkt(i))
    rec = ring.start_recording("ev", start_t=3.0, end_t=10.0)
    assert rec.packets[0].t == 3.0


def test_recording_older_than_the_ring_is_marked_truncated() -> None:
    ring, _, _ = make(keep_s=2.0)
    for i in range(10 * FPS):
        ring.offer(pkt(i))
    rec = ring.start_recording("ev", start_t=1.0, end_t=12.0)
    assert rec.truncated_start in ("start_of_video", "ring")
    assert rec.packets[0].keyframe


def test_extend_pushes_the_end_back_until_the_recording_finishes() -> None:
    ring, done, _ = make()
    for i in range(3 * FPS):
        ring.offer(pkt(i))
    rec = ring.start_recording("ev", start_t=0.5, end_t=4.0)
    assert ring.extend("ev", 6.0)
    for i in range(3 * FPS, 8 * FPS):
        ring.offer(pkt(i))
    assert [d.key for d in done] == [rec.key]
    assert 5.9 < rec.packets[-1].t <= 6.0
    assert not ring.extend("ev", 9.0)  # already finished


def test_detector_lag_past_the_end_cuts_immediately() -> None:
    ring, done, _ = make()
    for i in range(8 * FPS):
        ring.offer(pkt(i))
    rec = ring.start_recording("ev", start_t=1.0, end_t=3.0)
    assert [d.key for d in done] == [rec.key]
    assert rec.packets[-1].t <= 3.0


def test_two_recordings_share_the_ring() -> None:
    ring, done, _ = make()
    for i in range(4 * FPS):
        ring.offer(pkt(i))
    a = ring.start_recording("a", 1.0, 5.0)
    b = ring.start_recording("b", 2.5, 6.0)
    for i in range(4 * FPS, 7 * FPS):
        ring.offer(pkt(i))
    assert {r.key for r in done} == {"a", "b"}
    assert a.packets[0].t == 1.0 and b.packets[0].t == 2.0


def test_flush_finishes_open_recordings_with_what_they_have() -> None:
    ring, done, _ = make()
    for i in range(4 * FPS):
        ring.offer(pkt(i))
    rec = ring.start_recording("ev", 1.0, 100.0)
    ring.end()
    assert [d.key for d in done] == [rec.key] and rec.packets[-1].t == (4 * FPS - 1) / FPS


def test_a_recording_holds_what_is_shown_in_its_time_range_and_no_more() -> None:
    ring, done, _ = make()
    for i in range(4 * FPS):
        ring.offer(pkt(i))
    ring.start_recording("ev", 2.5, 7.5)
    for i in range(4 * FPS, 10 * FPS):
        ring.offer(pkt(i))
    (rec,) = done
    assert rec.packets[0].t == 2.0  # the keyframe before the wanted start: the clip's hidden lead-in
    assert [p for p in rec.packets if p.t >= 2.5][0].t == 75 / FPS
    assert abs(rec.packets[-1].t - (7.5 - 1 / FPS)) < 1e-9  # the last frame shown before the end
    assert sum(1 for p in rec.packets if p.t >= 2.5) == 150 and rec.truncated is None


def test_a_reference_frame_shown_after_the_end_waits_for_the_b_frames_before_it() -> None:
    """Decode order P(9) B(7) B(8): frame 7, shown before the end, arrives after frame 9, which it needs."""
    ring, done, _ = make()
    order = [0, 3, 1, 2, 6, 4, 5, 9, 7, 8, 12, 10, 11, 15, 13, 14, 18, 16, 17]
    ring.start_recording("ev", 0.0, 8 / FPS)
    for i in order:
        ring.offer(Packet(b"\0", i, None, i == 0, i / FPS, 1000.0 + i / FPS, stream=None))  # type: ignore[arg-type]
    (rec,) = done
    assert sorted(p.pts for p in rec.packets) == [0, 1, 2, 3, 4, 5, 6, 7, 9]  # 9: a reference of 7
    assert {p.pts for p in rec.packets if p.t < 8 / FPS} == set(range(8))


def test_truncated_clips_say_why() -> None:
    ring, done, _ = make()
    for i in range(2 * FPS):  # the video began at 0: a start wanted at -1 s cannot be had
        ring.offer(pkt(i))
    ring.start_recording("early", -1.0, 4.0)
    ring.start_recording("late", 1.0, 6.0)
    for i in range(2 * FPS, 3 * FPS):
        ring.offer(pkt(i))
    ring.end("shutdown")  # stopped at 3 s: both end early
    by_key = {r.key: r for r in done}
    assert by_key["early"].truncated == "start_of_video"
    assert by_key["late"].truncated == "shutdown"


def test_a_recording_complete_when_flushed_is_not_truncated() -> None:
    ring, done, _ = make()
    ring.start_recording("ev", 0.0, 1.0)
    for i in range(FPS + 2):  # up to 1.033 s: complete, but not yet REORDER_S past its end
        ring.offer(pkt(i))
    ring.end()
    (rec,) = done
    assert rec.truncated is None and len(rec.packets) == FPS


def test_a_recording_is_handed_over_once_detection_has_analysed_past_its_end() -> None:
    """Its packets all in is not enough: its clip's track needs every frame up to its end analysed."""
    done: list[Finished] = []
    ring = RingBuffer(9.0, 1 << 30, done.append)
    for i in range(2 * FPS):
        ring.offer(pkt(i))
    ring.start_recording("ev", 1.0, 3.0)
    for i in range(2 * FPS, 4 * FPS):  # capture is past the end (and the reorder margin)
        ring.offer(pkt(i))
    ring.analysed(2.9)
    assert done == [] and ring.status().open_recordings == 1  # detection is behind: held
    ring.analysed(3.0)
    assert [d.key for d in done] == ["ev"] and done[0].packets[-1].t < 3.0
    assert ring.status().open_recordings == 0


def test_a_flush_hands_over_recordings_detection_has_not_reached() -> None:
    done: list[Finished] = []
    ring = RingBuffer(9.0, 1 << 30, done.append)
    for i in range(2 * FPS):
        ring.offer(pkt(i))
    ring.start_recording("held", 0.5, 1.5)  # complete, waiting for detection
    ring.start_recording("open", 1.0, 5.0)
    for i in range(2 * FPS, 3 * FPS):
        ring.offer(pkt(i))
    ring.end("shutdown")
    assert {d.key for d in done} == {"held", "open"}
    assert next(d for d in done if d.key == "open").truncated_end == "shutdown"


def test_a_new_session_finishes_the_old_ones_recordings_and_keeps_its_packets_for_late_reads() -> None:
    ring, done, _ = make()
    for i in range(3 * FPS):
        ring.offer(pkt(i))
    open_rec = ring.start_recording("open", start_t=1.0, end_t=4.0)
    ring.reset("source_restart")
    assert [d.key for d in done] == ["open"] and done[0].truncated_end == "source_restart"
    for i in range(10 * FPS, 12 * FPS):  # the new stream, its capture times after a gap
        ring.offer(pkt(i))
    assert open_rec.packets[-1].t < 3.0  # none of the new stream's packets joined it
    late = ring.start_recording("late", start_t=1.5, end_t=4.0, at=2.5)  # a read detection made late
    assert [d.key for d in done] == ["open", "late"] and done[1].truncated_end == "source_restart"
    assert all(p.t < 3.0 for p in late.packets) and late.packets[0].t == 1.0


def test_a_recording_opened_while_a_reset_hands_over_belongs_to_the_new_session() -> None:
    """The detect thread may open a recording at any moment of a reset; the hand-over is the moment the
    old session's recordings leave it, and by then the new session is current: a recording opened then is
    the new stream's, never the old one's left open to gather the new stream's packets."""
    opened = []

    def on_finished(fin: Finished) -> None:
        if not opened:
            opened.append(ring.start_recording("during", start_t=10.0, end_t=11.0))

    ring = RingBuffer(9.0, 1 << 30, on_finished, Metrics())
    ring.analysed(math.inf)
    for i in range(3 * FPS):
        ring.offer(pkt(i))
    ring.start_recording("open", start_t=1.0, end_t=4.0)
    ring.reset("source_restart")
    assert opened and opened[0].session == 1
