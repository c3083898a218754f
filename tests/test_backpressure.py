"""One back-pressure setting for the whole pipeline, decided from the source: a file read as fast as it
decodes BLOCKs (every stage waits for the next, nothing is dropped, every label found), a camera or a
file played at its recorded pace DROPs (the capture thread never waits)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.delivery.sinks import FolderSink
from edge_agent.pipeline.wiring import Pipeline, backpressure_for
from edge_agent.stage import Backpressure
from tests.metric_values import value

SAMPLE = Path(__file__).resolve().parent.parent / "sample_media" / "conveyor_720p30.mp4"


@pytest.mark.parametrize(("source", "expected"), [
    ("kind: file\n  path: x.mp4", Backpressure.BLOCK),
    ("kind: file\n  path: x.mp4\n  realtime: true", Backpressure.DROP),
    ("kind: v4l2\n  path: /dev/video0", Backpressure.DROP),
    ("kind: url\n  path: rtsp://camera/stream", Backpressure.DROP),
    ("kind: pipe\n  command: rpicam-vid -o -", Backpressure.DROP),
    ("kind: picamera2", Backpressure.DROP),
])
def test_the_backpressure_follows_the_source(source: str, expected: Backpressure) -> None:
    cfg = parse_config(f"source:\n  {source}\n", env={})
    assert backpressure_for(cfg.source) is expected


def test_a_fast_replay_waits_for_every_stage_and_drops_nothing(tmp_path: Path) -> None:
    """Capture demuxes a file ~20x faster than it decodes: only waiting keeps every packet for the
    decoder and every picked frame for the detector."""
    # max_blind_s 0: every slot's picture is analysed (what the keyframe window skips is its tests' subject)
    cfg = parse_config(f"source:\n  kind: file\n  path: {SAMPLE}\ndetector:\n  max_blind_s: 0\n", env={})
    pipeline = Pipeline(cfg, FolderSink(tmp_path / "clips"))
    assert pipeline.backpressure() is Backpressure.BLOCK
    pipeline.start()
    assert pipeline.wait(120)
    status = pipeline.status()
    assert status.failure is None
    assert status.capture.frames == 630 and status.decode.dropped == 0
    assert value(pipeline.metrics, "edge_agent_frames_skipped_total") == 0
    # a picture a slot of detector.rate_hz, over the 21 s of video: none lost between decode and detect
    assert status.detect.frames_analysed == pytest.approx(21 * cfg.detector.rate_hz, abs=2)
    assert not status.capture.camera


def test_a_reload_that_reopens_the_source_decides_the_backpressure_again(tmp_path: Path) -> None:
    """source.realtime (or kind) reloaded: the capture reopens the source in process, and the session it
    opens brings its own back-pressure, before its first packet."""
    cfg = parse_config(f"source:\n  kind: file\n  path: {SAMPLE}\n  realtime: true\n  loop: true\n", env={})
    pipeline = Pipeline(cfg, FolderSink(tmp_path / "clips"))
    pipeline.start()
    try:
        assert pipeline.ready.wait(10) and pipeline.backpressure() is Backpressure.DROP
        fast = cfg.model_copy(update={"source": cfg.source.model_copy(update={"realtime": False})})
        pipeline.capture.apply(fast, frozenset({"source.realtime"}))
        deadline = time.monotonic() + 10
        while pipeline.backpressure() is not Backpressure.BLOCK and time.monotonic() < deadline:
            time.sleep(0.02)
        # a looped file read at full speed starts a session each loop (~0.5 s): the reopen made the second
        assert pipeline.backpressure() is Backpressure.BLOCK and pipeline.status().capture.sessions >= 2
    finally:
        assert pipeline.stop(10)
