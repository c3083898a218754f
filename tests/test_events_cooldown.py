"""One clip per passing product: sightings within the cooldown are the same event and leave its clip
exactly pre + post long (with `extend` they push the post-roll back, capped by max_s); different CIDs
are separate."""

from __future__ import annotations

from edge_agent.pipeline.events import Action, EventTracker
from edge_agent.pipeline.qr_detector import Detection


def det(t: float) -> Detection:
    return Detection(b"x", ((0, 0), (1, 0), (1, 1), (0, 1)), t, 1000.0 + t, 1280, 720, "zxing")


def tracker(cooldown: float = 5.0, max_s: float = 30.0, extend: bool = False) -> EventTracker:
    return EventTracker(cooldown_s=cooldown, pre_roll_s=2.5, post_roll_s=2.5, max_s=max_s, extend=extend)


def test_first_sighting_opens_an_event_with_pre_and_post_roll() -> None:
    action, ev = tracker().observe("CID-1", det(10.0))
    assert action is Action.NEW
    assert (ev.start_t, ev.end_t) == (7.5, 12.5)


def test_sighting_within_cooldown_is_the_same_event_and_the_clip_does_not_grow() -> None:
    tr = tracker()
    _, ev = tr.observe("CID-1", det(10.0))
    for t in (10.5, 11.0, 12.0, 14.0):  # still in view
        action, same = tr.observe("CID-1", det(t))
        assert action is Action.SUPPRESSED and same is ev
    assert (ev.start_t, ev.end_t) == (7.5, 12.5) and ev.hits == 5 and ev.last_t == 14.0


def test_sighting_within_cooldown_extends_post_roll_when_asked() -> None:
    tr = tracker(extend=True)
    _, ev = tr.observe("CID-1", det(10.0))
    action, same = tr.observe("CID-1", det(11.0))
    assert action is Action.EXTEND and same is ev
    assert ev.end_t == 13.5 and ev.hits == 2


def test_extension_is_capped_by_max_clip_length() -> None:
    tr = tracker(cooldown=5.0, max_s=8.0, extend=True)
    _, ev = tr.observe("CID-1", det(10.0))
    for t in (12.0, 14.0, 16.0, 18.0):
        tr.observe("CID-1", det(t))
    assert ev.end_t == ev.start_t + 8.0


def test_sighting_after_cooldown_is_a_new_event() -> None:
    tr = tracker(cooldown=5.0)
    _, first = tr.observe("CID-1", det(10.0))
    tr.close(first)
    action, second = tr.observe("CID-1", det(15.5))
    assert action is Action.NEW and second.event_id != first.event_id


def test_sighting_of_a_cut_clip_within_cooldown_is_suppressed() -> None:
    tr = tracker(cooldown=5.0)
    _, ev = tr.observe("CID-1", det(10.0))
    tr.close(ev)
    action, same = tr.observe("CID-1", det(13.0))
    assert action is Action.SUPPRESSED and same is ev


def test_different_cids_are_independent_events() -> None:
    tr = tracker()
    a_action, a = tr.observe("CID-A", det(10.0))
    b_action, b = tr.observe("CID-B", det(10.1))
    assert a_action is b_action is Action.NEW
    assert a.event_id != b.event_id


def test_reconfigure_applies_to_new_events() -> None:
    tr = tracker()
    tr.configure(cooldown_s=1.0, pre_roll_s=1.0, post_roll_s=4.0, max_s=30.0)
    _, ev = tr.observe("CID-1", det(10.0))
    assert (ev.start_t, ev.end_t) == (9.0, 14.0)
