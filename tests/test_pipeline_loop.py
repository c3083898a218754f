"""A looping file source plays on, each pass a new session with later capture times, so the same
label gives one event per pass; stopping cuts the open clip short instead of losing it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.config import parse_config
from edge_agent.delivery.sinks import FolderSink
from edge_agent.pipeline.events import EventSnapshot
from edge_agent.pipeline.wiring import Pipeline
from tests.media_factory import make_video
from tests.metric_values import value


@pytest.mark.slow
def test_looping_file_source_makes_one_event_per_pass_and_remembers_only_recent_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(const, "RECENT_EVENTS", 2)  # a daemon running for months keeps a window, not a history
    video = make_video(tmp_path / "v.mp4", seconds=3, codes=[("CID-LOOP-1", 1.0, 1.6)])
    cfg = parse_config(f"source:\n  kind: file\n  path: {video}\n  loop: true\nclip:\n  pre_roll_s: 0.5\n"
                       "  post_roll_s: 0.5\n", env={})
    heard: list[EventSnapshot] = []
    pipeline = Pipeline(cfg, FolderSink(tmp_path / "clips"), on_event=heard.append)
    pipeline.start()
    deadline = time.monotonic() + 30
    while value(pipeline.metrics, "edge_agent_frames_total") < 3 * 90 + 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pipeline.stop(10)
    events = sorted(heard, key=lambda e: e.detected_t)
    assert pipeline.events_total == len(events) and ([e.event_id for e in pipeline.events.snapshot()]
                                                   == [e.event_id for e in events[-2:]])
    assert len(events) >= 3 and {e.cid for e in events} == {"CID-LOOP-1"}
    gaps = [b.detected_t - a.detected_t for a, b in zip(events, events[1:], strict=False)]
    assert all(g > cfg.detector.cooldown_s for g in gaps)  # passes never merge into one event
    assert all(e.clip and not e.clip_error for e in events)
    assert len(list((tmp_path / "clips").glob("*.mp4"))) == len(events)
