"""The event log: each thread makes its own transitions (detect opens and counts sightings, the clip
stage records the clip, the uploader its result), in any order, and readers get frozen snapshots."""

from __future__ import annotations

import dataclasses
import queue
import threading

import pytest

from edge_agent.delivery.outcome import UploadResult
from edge_agent.pipeline.events import Delivery, EventLog, OpenEvent
from edge_agent.pipeline.qr_detector import Detection

SIGHTINGS = 5


def opened_event(n: int, t: float = 10.0) -> OpenEvent:
    det = Detection(f"CID-{n}".encode(), ((0, 0), (10, 0), (10, 10), (0, 10)), t, t, 640, 480, "zxing")
    return OpenEvent(f"ev-{n}", f"CID-{n}", det, t - 2.5, t + 2.5, t)


def test_three_threads_record_every_transition_whatever_their_order() -> None:
    """Detect, clip and upload threads run at once. The uploader delivers as soon as the spool has a
    clip, so its answer may come before the clip stage records the clip: for even events it does (the
    clip thread waits for the answer), for odd ones it comes after; neither is lost."""
    log = EventLog(keep=None)
    n = 300
    to_clip: queue.Queue[OpenEvent | None] = queue.Queue()
    to_upload: queue.Queue[OpenEvent | None] = queue.Queue()
    answered = [threading.Event() for _ in range(n)]
    clipped = [threading.Event() for _ in range(n)]

    def detect() -> None:
        for i in range(n):
            ev = opened_event(i, 10.0 + i)
            log.opened(ev)
            to_clip.put(ev)
            to_upload.put(ev)
            for k in range(SIGHTINGS):
                ev.hits += 1
                ev.last_t = ev.first.t + 0.1 * (k + 1)
                log.sighted(ev)
        to_clip.put(None)
        to_upload.put(None)

    def clip() -> None:
        while (ev := to_clip.get()) is not None:
            i = int(ev.cid[4:])
            if i % 2 == 0:
                assert answered[i].wait(10)
            log.clip_made(ev.event_id, {"duration_s": 5.0}, error=None, ms=12.5, queued=True)
            clipped[i].set()

    def upload() -> None:
        while (ev := to_upload.get()) is not None:
            i = int(ev.cid[4:])
            if i % 2 == 1:
                assert clipped[i].wait(10)
            log.upload_result(ev.event_id, ev.cid, UploadResult.RETRY)  # changes nothing yet
            log.upload_result(ev.event_id, ev.cid, UploadResult.DUPLICATE if i % 3 == 0 else UploadResult.DELIVERED)
            answered[i].set()

    threads = [threading.Thread(target=f) for f in (detect, clip, upload)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    events = log.snapshot()
    assert [e.event_id for e in events] == [f"ev-{i}" for i in range(n)]
    for i, e in enumerate(events):
        assert e.hits == 1 + SIGHTINGS and e.last_t == pytest.approx(e.first.t + 0.1 * SIGHTINGS)
        assert e.queued is True and e.clip == {"duration_s": 5.0} and e.clip_ms == 12.5
        assert e.delivery is (Delivery.DUPLICATE if i % 3 == 0 else Delivery.DELIVERED) and e.uploaded


def test_an_event_goes_from_recording_to_queued_to_its_servers_answer() -> None:
    log = EventLog()
    ev = opened_event(1)
    assert log.opened(ev).delivery is Delivery.RECORDING
    made = log.clip_made(ev.event_id, {"error": "no keyframe"}, error="no keyframe", ms=None, queued=True)
    assert made is not None and made.delivery is Delivery.QUEUED and made.clip_error == "no keyframe"
    log.upload_result(ev.event_id, ev.cid, UploadResult.STOPPED)  # an attempt cut short by a stop: still queued
    assert log.get(ev.event_id).delivery is Delivery.QUEUED  # type: ignore[union-attr]
    log.upload_result(ev.event_id, ev.cid, UploadResult.QUARANTINED)
    assert log.get(ev.event_id).delivery is Delivery.QUARANTINED  # type: ignore[union-attr]
    refused = opened_event(2)
    log.opened(refused)
    log.clip_made(refused.event_id, {}, error=None, ms=3.0, queued=False)
    assert log.get(refused.event_id).delivery is Delivery.REFUSED  # type: ignore[union-attr]
    log.upload_result("queued-before-a-restart", "CID-OLD", UploadResult.DELIVERED)  # not this run's: ignored
    assert log.get("queued-before-a-restart") is None


def test_readers_get_frozen_snapshots_that_later_transitions_do_not_change() -> None:
    log = EventLog()
    ev = opened_event(1)
    log.opened(ev)
    before = log.clip_made(ev.event_id, {"duration_s": 5.0}, error=None, ms=1.0, queued=True)
    assert before is not None
    log.upload_result(ev.event_id, ev.cid, UploadResult.DELIVERED)
    assert before.delivery is Delivery.QUEUED and log.get(ev.event_id).delivery is Delivery.DELIVERED  # type: ignore[union-attr]
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.queued = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        before.clip["duration_s"] = 0.0  # type: ignore[index]


def test_a_bounded_log_forgets_the_oldest_finished_events_never_one_still_recording() -> None:
    log = EventLog(keep=3)
    evs = [opened_event(i, 10.0 + i) for i in range(5)]
    for ev in evs:
        log.opened(ev)
    assert len(log.snapshot()) == 5  # all still recording: the clip stage needs each
    for ev in evs[1:]:
        log.clip_made(ev.event_id, {}, error=None, ms=1.0, queued=True)
    assert [e.event_id for e in log.snapshot()] == ["ev-0", "ev-3", "ev-4"]
    assert log.clip_made("ev-0", {}, error=None, ms=1.0, queued=True) is not None


def test_the_live_view_shows_each_delivery_state_with_its_reason() -> None:
    from edge_agent.service.liveview import event_state

    log = EventLog()
    states = {}
    for n, (error, queued, result) in enumerate([
            (None, None, None), (None, True, None), ("no keyframe", True, None), (None, False, None),
            (None, True, UploadResult.DELIVERED), (None, True, UploadResult.DUPLICATE),
            ("no keyframe", True, UploadResult.QUARANTINED)]):
        ev = opened_event(n)
        log.opened(ev)
        if queued is not None:
            log.clip_made(ev.event_id, {}, error=error, ms=1.0, queued=queued)
        if result is not None:
            log.upload_result(ev.event_id, ev.cid, result)
        snap = log.get(ev.event_id)
        assert snap is not None
        states[n] = event_state(snap, "HTTP 422: bad metadata")
    assert states == {
        0: {"state": "recording", "reason": None}, 1: {"state": "queued", "reason": None},
        2: {"state": "failed", "reason": "no keyframe"}, 3: {"state": "failed", "reason": "not kept by the spool"},
        4: {"state": "delivered", "reason": None}, 5: {"state": "delivered", "reason": "already on the server"},
        6: {"state": "quarantined", "reason": "HTTP 422: bad metadata"}}
