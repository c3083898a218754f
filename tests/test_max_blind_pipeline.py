"""detector.max_blind_s through the pipeline, on a live camera and on a replayed file with B-frames: the end
of each keyframe interval is not decoded, every label in view longer than max_blind_s is still read, and
clips keep every frame the source sent (the ring has them all). pipeline/keyframe_window.py decides;
tests/test_keyframe_window.py pins its decisions."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import av
import pytest

from edge_agent.config import parse_config
from edge_agent.delivery.sinks import FolderSink
from edge_agent.pipeline.events import EventSnapshot
from edge_agent.pipeline.wiring import Pipeline
from tests.media_factory import make_video

ROOT = Path(__file__).resolve().parent.parent
FPS = 30
# in view 0.7 s each, coming into view at every phase of the keyframe interval (.15 s apart), after the
# first keyframes (the interval must be known before anything is skipped)
LABELS = [(f"CID-BLIND-{i}", 3.15 + 1.15 * i, 3.85 + 1.15 * i) for i in range(6)]


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("blind") / "line.mp4", seconds=12.5, fps=FPS, size=(640, 360),
                      gop=FPS, codes=LABELS)


def presented_frames(clip: Path) -> int:
    with av.open(str(clip)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size and not p.is_discard)


@pytest.mark.slow
def test_a_camera_decodes_half_of_each_second_reads_every_label_and_clips_keep_every_frame(
        camera_video: Path, tmp_path: Path) -> None:
    camera = f"{sys.executable} {ROOT / 'tests' / 'stream_sample.py'} {camera_video}"
    cfg = parse_config(f"source:\n  kind: pipe\n  command: {camera}\ndetector:\n  max_blind_s: 0.5\n", env={})
    heard: list[EventSnapshot] = []
    pipeline = Pipeline(cfg, FolderSink(tmp_path / "clips"), on_event=heard.append)
    pipeline.start()
    deadline = time.monotonic() + 60
    while len(heard) < len(LABELS) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pipeline.stop(10)
    status = pipeline.status().decode
    assert {e.cid for e in heard} == {cid for cid, *_ in LABELS}, heard
    # from the 4th keyframe (3 s) on, 14 frames of each 30 are left undecoded (0.5 s to the next keyframe)
    assert 0.4 * 14 * 9 <= status.undecoded <= 14 * 10, status
    assert status.dropped == 0
    for e in heard:
        assert e.clip and not e.clip_error, e
        assert presented_frames(tmp_path / "clips" / f"{e.event_id}.mp4") == 5 * FPS, e.cid


@pytest.mark.slow
@pytest.mark.parametrize("open_gop", [False, True])
def test_a_replayed_file_with_b_frames_is_skipped_like_a_camera_unless_its_gops_are_open(
        open_gop: bool, tmp_path: Path) -> None:
    """Fast replay (BLOCK) applies the same window: a closed-GOP x264 file with B-frames leaves the ends of
    its intervals undecoded without a decoding error; an open GOP's leading pictures (coded after a
    keyframe, referencing the interval before it) turn skipping off."""
    video = make_video(tmp_path / "line.mp4", seconds=12.5, fps=FPS, size=(640, 360), gop=FPS, codes=LABELS,
                       bframes=2, open_gop=open_gop)
    cfg = parse_config(f"source:\n  kind: file\n  path: {video}\n", env={})
    heard: list[EventSnapshot] = []
    pipeline = Pipeline(cfg, FolderSink(tmp_path / "clips"), on_event=heard.append)
    pipeline.start()
    assert pipeline.wait(120)
    status = pipeline.status().decode
    assert {e.cid for e in heard} == {cid for cid, *_ in LABELS}, heard
    assert status.errors == 0 and status.dropped == 0
    if open_gop:
        assert status.undecoded == 0, status
    else:
        # from the 4th keyframe (3 s) on, up to 14 frames of each 30 (fewer by the B-frames' reordering)
        assert 10 * 9 <= status.undecoded <= 14 * 10, status
    for e in heard:
        assert e.clip and not e.clip_error, e
        assert presented_frames(tmp_path / "clips" / f"{e.event_id}.mp4") == 5 * FPS, e.cid
