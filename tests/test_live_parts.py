"""The live view's pieces in the pipeline: the viewer slot, event thumbnails, the read tally."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.capture.media import GrayFrame
from edge_agent.pipeline.view_feed import ReadTally, Thumbnails, ViewerSlot

SAMPLE = Path(__file__).resolve().parent.parent / "sample_media" / "conveyor_720p30.mp4"


def frame(t: float = 0.0) -> GrayFrame:
    return GrayFrame(np.full((720, 1280), 128, np.uint8), t, time.time())


def test_the_slot_holds_nothing_until_a_viewer_asks_and_lets_go_after() -> None:
    now = [100.0]
    slot = ViewerSlot(ttl_s=5.0, monotonic=lambda: now[0])
    slot.offer(frame(1), ())
    assert slot.latest() == (0, None)  # nobody watching: not even a reference is kept
    slot.want()
    f = frame(2)
    slot.offer(f, ())
    seq, item = slot.latest()
    assert seq == 1 and item is not None and item[0] is f
    now[0] += 4.9  # still watched: offers go on
    slot.offer(frame(3), ())
    assert slot.latest()[0] == 2 and slot.wanted
    now[0] += 0.2  # 5.1 s since the viewer asked: gone
    slot.offer(frame(4), ())
    assert slot.latest()[1] is None and not slot.wanted


def test_thumbnails_are_small_outlined_and_bounded() -> None:
    thumbs = Thumbnails(kept=3)
    poly = ((600, 300), (700, 300), (700, 400), (600, 400))
    for i in range(5):
        thumbs.add(f"ev{i}", frame(i), poly)
    assert thumbs.get("ev0") is None and thumbs.get("ev1") is None
    jpeg = thumbs.get("ev4")
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8" and len(jpeg) < 10_000
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert max(img.shape[:2]) <= 160
    assert (img[..., 1].astype(int) - img[..., 2].astype(int)).max() > 80  # the green outline is there


def test_the_read_rate_over_1_10_and_60_minutes() -> None:
    tally = ReadTally()
    now = 10_000.0
    for ago in (10, 20, 30, 400, 3000):
        tally.read(now - ago)
    tally.noread(now - 5)
    tally.noread(now - 5000)  # older than an hour: forgotten
    r = tally.rates(now)
    assert r["1m"] == {"reads": 3, "noreads": 1, "rate": 75.0}
    assert r["10m"] == {"reads": 4, "noreads": 1, "rate": 80.0}
    assert r["60m"] == {"reads": 5, "noreads": 1, "rate": round(500 / 6, 1)}
    assert ReadTally().rates(now)["1m"]["rate"] is None


def test_the_live_view_tells_the_decode_stage_while_someone_watches(tmp_path: Path) -> None:
    """A running pipeline's live view: a viewer's request makes the decode stage decode every frame (its
    status says watched, and no frame is left undecoded meanwhile); once viewers are gone it says so."""
    from edge_agent.config import parse_config
    from edge_agent.delivery.sinks import FolderSink
    from edge_agent.pipeline.wiring import Pipeline
    from edge_agent.service.liveview import LiveView

    cfg = parse_config(f"source:\n  kind: file\n  path: {SAMPLE}\n  realtime: true\n  loop: true\n", env={})
    pipeline = Pipeline(cfg, FolderSink(tmp_path / "clips"))
    feed = pipeline.view_feed()
    feed.viewer.ttl_s = 0.5
    view = LiveView(cfg, feed.viewer, source=lambda: "sample", detect_ms=lambda: 0.0, watch=feed.watch)
    pipeline.start()
    try:
        assert pipeline.ready.wait(10) and not pipeline.status().decode.watched
        assert view.frame_jpeg() is not None  # a viewer
        assert pipeline.status().decode.watched
        deadline = time.monotonic() + 10
        while pipeline.status().decode.watched and time.monotonic() < deadline:
            time.sleep(0.05)  # nobody asks any more: the render thread ends after the viewer's TTL
        assert not pipeline.status().decode.watched
    finally:
        view.close()
        assert pipeline.stop(10)
