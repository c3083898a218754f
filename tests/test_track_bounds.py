"""A clip's track is bounded whatever passes the camera: at most MAX_TRACK_CIDS codes (the event's own
first, then the most seen), at most MAX_SIGHTINGS_PER_CID sightings each (thinned evenly, first and
last kept), so its metadata stays small and shallow. And `read_first_seen` says whether the code was
located unread just before its first read. Driven through the sighting log the detect stage writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_agent.capture.media import GrayFrame
from edge_agent.delivery import contract
from edge_agent.pipeline.qr_detector import Detection, Unread
from edge_agent.pipeline.track import SightingLog

ROOT = Path(__file__).resolve().parent.parent
GRAY = np.full((360, 640), 128, np.uint8)  # the figures cost per pixel: a small frame keeps this quick
# a worst case for the size: the longest CIDs the default pattern accepts, the longest decoder name
CIDS = [f"{i:02d}" + "X" * 126 for i in range(10)]


def det(t: float, x: int, decoder: str = "zxing-enlarged") -> Detection:
    poly = ((x, 100), (x + 100, 100), (x + 100, 200), (x, 200))
    return Detection(b"", poly, t, 1e9 + t, 1920, 1080, decoder, 29)


def frame(log: SightingLog, t: float, reads: list[tuple[str, Detection]], unread: tuple[Unread, ...] = ()) -> None:
    log.frame(GrayFrame(GRAY, t, 1e9 + t), reads, unread)


def depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def test_a_crowded_clip_keeps_the_own_code_first_the_most_seen_others_and_thins_evenly() -> None:
    log = SightingLog(keep_s=60)
    for n in range(300):  # 10 codes in view for 30 s at 10 Hz: 300 sightings each
        t = n / 10
        frame(log, t, [(c, det(t, 1000 + i)) for i, c in enumerate(CIDS) if i < 9 or n % 2])
    own = CIDS[9]  # the least seen: kept all the same, and first
    track, quality = log.track(own, det(0.1, 1009), 0.0, 30.0, 0.0)
    assert [c.cid for c in track] == [own, *CIDS[: contract.MAX_TRACK_CIDS - 1]]
    for code in track:
        times = [s.t for s in code.sightings]
        assert len(times) == contract.MAX_SIGHTINGS_PER_CID and code.thinned_from in (150, 300)
        assert times[0] == (0.1 if code.cid == own else 0.0) and times[-1] == 29.9
        steps = np.diff(times)
        assert steps.max() - steps.min() <= 0.2 + 1e-9  # evenly thinned, to an analysed frame
    assert quality is not None and quality.frames == 150 and quality.read_first_seen
    meta = contract.DetectionInfo(decoder="zxing", polygon=[], frame_width=1920, frame_height=1080, track=track,
                                  quality=quality).model_dump(mode="json", exclude_none=True)
    size = len(json.dumps(meta))
    assert size <= 48_000 and depth({"detection": meta}) <= 8, (size, depth({"detection": meta}))


def test_the_span_and_the_clip_time_come_from_the_clip_not_the_event() -> None:
    log = SightingLog(keep_s=60)
    for n in range(100):
        t = 100 + n / 10
        frame(log, t, [("A", det(t, 10, "zxing"))] + ([("B", det(t, 500, "zbar"))] if n >= 50 else []))
    track, _ = log.track("A", det(100.0, 10), 102.0, 107.0, 102.0)
    assert [c.cid for c in track] == ["A", "B"]
    assert [s.t for s in track[0].sightings][:3] == [0.0, 0.1, 0.2] and track[0].sightings[-1].t == 4.9
    assert track[1].sightings[0].t == 3.0 and track[1].sightings[0].decoder == "zbar"
    # no clip made: the quality figures still, no track (no clip time to count in)
    track, quality = log.track("A", det(100.0, 10), 102.0, 107.0, None)
    assert track is None and quality is not None and quality.frames == 50


def test_a_code_located_unread_just_before_its_first_read_was_not_read_first() -> None:
    log = SightingLog(keep_s=60)
    frame(log, 0.0, [])
    frame(log, 0.1, [], (Unread(((990, 100), (1090, 100), (1090, 200), (990, 200)), "checksum"),))
    first = det(0.2, 1030)
    frame(log, 0.2, [("A", first)])
    assert log.track("A", first, 0.0, 5.0, 0.0)[1].read_first_seen is False
    # an unread symbol elsewhere in the frame is another code's business
    log = SightingLog(keep_s=60)
    frame(log, 0.1, [], (Unread(((5000, 5000), (5010, 5000), (5010, 5010), (5000, 5010)), "checksum"),))
    frame(log, 0.2, [("A", first)])
    assert log.track("A", first, 0.0, 5.0, 0.0)[1].read_first_seen is True


def test_waiting_for_detection_ends_when_it_reaches_the_time_or_finishes() -> None:
    log = SightingLog(keep_s=60)
    frame(log, 1.0, [])
    assert log.wait_analysed(1.0, 0) and not log.wait_analysed(2.0, 0)
    log.finish()
    assert log.wait_analysed(2.0, 0)


def test_the_metadata_schema_in_docs_is_the_contract() -> None:
    schema = json.loads((ROOT / "docs" / "metadata.schema.json").read_text())
    assert schema == contract.metadata_schema(), (
        "docs/metadata.schema.json is stale: python -c 'import json; from edge_agent.delivery.contract import "
        "metadata_schema; print(json.dumps(metadata_schema(), indent=2))' > docs/metadata.schema.json")
    assert "track" in schema["$defs"]["DetectionInfo"]["properties"]
