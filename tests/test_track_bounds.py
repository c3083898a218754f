"""A clip's track is bounded whatever passes the camera: at most MAX_TRACK_CIDS codes (the event's own
first, then the most seen), at most MAX_TRACK_FRAMES sightings each (one a frame; thinned evenly, first
and last kept), so its metadata stays small and shallow. And `read_first_seen` says whether the code was
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


def test_a_crowded_clip_keeps_whole_frames_evenly_within_the_bounds() -> None:
    log = SightingLog(keep_s=60)
    for n in range(300):  # 10 codes in view for 30 s at 10 Hz, a refused code and a no-read in every frame
        t = n / 10
        frame(log, t, [(c, det(t, 1000 + i)) for i, c in enumerate(CIDS) if i < 9 or n % 2]
              + [(None, det(t, 50))], (Unread(((9, 9), (99, 9), (99, 99), (9, 99)), "checksum"),))
    own = CIDS[9]  # the least seen: first all the same
    track, frames, quality = log.track(own, det(0.1, 1009), 0.0, 30.0, 0.0)
    assert track[0].cid == own and frames is not None
    assert len(frames.times) <= contract.MAX_TRACK_FRAMES and frames.thinned_from == 300 and frames.analysed == 300
    assert frames.times[0] == 0.0 and 0.1 in frames.times and frames.times[-1] == 29.9
    steps = np.diff([t for t in frames.times if t != 0.1])  # 0.1: the own code's first read, always kept
    assert steps.max() - steps.min() <= 0.2 + 1e-9  # evenly thinned, to an analysed frame
    # whole frames: every code read in a kept frame is in it, with the frame's refused code and no-read
    entries = sum(len(c.sightings) for c in track) + len(frames.symbols)
    assert entries <= contract.MAX_TRACK_ENTRIES and len(track) <= contract.MAX_TRACK_CIDS
    for t in frames.times:
        n = round(t * 10)
        want = {c for i, c in enumerate(CIDS) if i < 9 or n % 2}
        assert {c.cid for c in track if any(s.t == t for s in c.sightings)} == want, t
        assert sorted(s.kind for s in frames.symbols if s.t == t) == ["rejected", "unread"], t
    assert all(c.thinned_from in (150, 300) for c in track)
    assert quality is not None and quality.frames == 150 and quality.read_first_seen
    meta = contract.DetectionInfo(decoder="zxing", polygon=[], frame_width=1920, frame_height=1080, track=track,
                                  track_frames=frames, quality=quality).model_dump(mode="json", exclude_none=True)
    size = len(json.dumps(meta))
    assert size <= 48_000 and depth({"detection": meta}) <= 8, (size, depth({"detection": meta}))


def test_the_largest_track_stays_under_its_byte_bound() -> None:
    """Each frame as full as the bounds allow, with the longest CIDs, decoder names, 4-digit
    coordinates and sharpness figures: what the receiver's 64 KiB metadata limit must hold."""
    log = SightingLog(keep_s=60)
    cids = [f"{i:02d}" + "X" * 126 for i in range(contract.MAX_TRACK_CIDS)]
    per_frame = contract.MAX_TRACK_ENTRIES // contract.MAX_TRACK_FRAMES
    for n in range(contract.MAX_TRACK_FRAMES):  # 48 frames of 6 codes, 24 CIDs in 4 groups
        t = 1000.0 + n * 1.111
        group = cids[(n % 4) * per_frame:(n % 4 + 1) * per_frame]
        reads = [(c, Detection(b"", ((9000 + i, 1000), (9100, 1000), (9100, 1100), (9000, 1100)), t, 1e9 + t, 9999,
                               9999, "zxing-enlarged")) for i, c in enumerate(group)]
        frame(log, t, reads)
    track, frames, quality = log.track(cids[0], det(1000.0, 9000), 1000.0, 1060.0, 1000.0)
    for code in track:
        for s in code.sightings:
            s.sharpness = 99999.9  # the widest figure a real frame gives
    meta = contract.DetectionInfo(decoder="zxing", polygon=[], frame_width=1920, frame_height=1080, track=track,
                                  track_frames=frames, quality=quality).model_dump(mode="json", exclude_none=True)
    assert sum(len(c.sightings) for c in track) == contract.MAX_TRACK_ENTRIES and len(track) == 24
    size = len(json.dumps(meta))
    assert size <= 44_000, size


def test_refused_codes_and_no_reads_are_outlines_and_empty_frames_have_empty_neighbours() -> None:
    log = SightingLog(keep_s=60)
    for n in range(50):  # 5 s at 10 Hz: a code from 1.0 s to 2.0 s, a refused payload at 3.0 s, a no-read at 4.0 s
        t = 10 + n / 10
        reads: list = [("A", det(t, 100))] if 10 <= n <= 20 else []
        if n == 30:
            reads.append((None, Detection(b"DROP TABLE", ((1, 2), (3, 2), (3, 4), (1, 4)), t, 1e9 + t, 1920, 1080,
                                          "zxing")))
        frame(log, t, reads, (Unread(((5, 6), (7, 6), (7, 8), (5, 8)), "checksum"),) if n == 40 else ())
    track, frames, _ = log.track("A", det(11.0, 100), 10.0, 15.0, 10.0)
    assert frames is not None and [c.cid for c in track] == ["A"] and frames.thinned_from is None
    assert frames.times == [round(1 + i / 10, 3) for i in range(11)] + [3.0, 4.0]
    assert [(s.t, s.kind, s.polygon) for s in frames.symbols] == [(3.0, "rejected", [(1, 2), (3, 2), (3, 4), (1, 4)]),
                                                                  (4.0, "unread", [(5, 6), (7, 6), (7, 8), (5, 8)])]
    assert "DROP" not in json.dumps(frames.model_dump(mode="json"))  # the untrusted payload never goes out
    # empty: no code in the frame nor in the analysed frame either side; at most MAX_TRACK_EMPTY, evenly spread
    busy = {0.9, 1.0, 2.0, 2.1, 2.9, 3.0, 3.1, 3.9, 4.0, 4.1} | {round(1 + i / 10, 3) for i in range(11)}
    free = [round(i / 10, 3) for i in range(50) if round(i / 10, 3) not in busy]
    assert frames.empty == [free[round(i * (len(free) - 1) / 15)] for i in range(16)] and frames.analysed == 50
    assert not busy & set(frames.empty)


def test_a_code_located_unread_just_before_its_first_read_was_not_read_first() -> None:
    log = SightingLog(keep_s=60)
    frame(log, 0.0, [])
    frame(log, 0.1, [], (Unread(((990, 100), (1090, 100), (1090, 200), (990, 200)), "checksum"),))
    first = det(0.2, 1030)
    frame(log, 0.2, [("A", first)])
    assert log.track("A", first, 0.0, 5.0, 0.0)[2].read_first_seen is False
    # an unread symbol elsewhere in the frame is another code's business
    log = SightingLog(keep_s=60)
    frame(log, 0.1, [], (Unread(((5000, 5000), (5010, 5000), (5010, 5010), (5000, 5010)), "checksum"),))
    frame(log, 0.2, [("A", first)])
    assert log.track("A", first, 0.0, 5.0, 0.0)[2].read_first_seen is True


def test_the_metadata_schema_in_docs_is_the_contract() -> None:
    schema = json.loads((ROOT / "docs" / "metadata.schema.json").read_text())
    assert schema == contract.metadata_schema(), (
        "docs/metadata.schema.json is stale: python -c 'import json; from edge_agent.delivery.contract import "
        "metadata_schema; print(json.dumps(metadata_schema(), indent=2))' > docs/metadata.schema.json")
    assert "track" in schema["$defs"]["DetectionInfo"]["properties"]
