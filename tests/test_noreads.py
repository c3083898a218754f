"""No-reads: a located symbol nobody reads, with no read near it within the cooldown, is reported once
with its view; a read on the same (moving) symbol clears it; the folder of views stays bounded; and
`edge-agent noreads` lists and clears it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.capture.media import GrayFrame
from edge_agent.config import DetectorConfig
from edge_agent.pipeline.noreads import NoRead, NoReadStore, NoReadTracker
from edge_agent.pipeline.qr_detector import Detection, Detector, DetectResult, Unread
from tests import agent_process
from tests.media_factory import qr_image

W, H = 640, 360


def square(x: int, y: int, s: int = 80) -> tuple[tuple[int, int], ...]:
    return ((x, y), (x + s, y), (x + s, y + s), (x, y + s))


def result(t: float, reads: list[tuple[int, int]] = (), unread: list[tuple[int, int]] = (),
           s: int = 80) -> DetectResult:
    return DetectResult(
        tuple(Detection(b"CID-X", square(x, y, s), t, 1000 + t, W, H, "zxing") for x, y in reads),
        tuple(Unread(square(x, y, s), "checksum") for x, y in unread), t, 1000 + t, W, H)


def frame(t: float) -> GrayFrame:
    return GrayFrame(np.full((H, W), 128, np.uint8), t, 1000 + t)


def run(tracker: NoReadTracker, steps: list[DetectResult]) -> list[NoRead]:
    out: list[NoRead] = []
    for r in steps:
        out += tracker.observe(frame(r.t), r)
    return out


def test_symbol_unread_for_the_cooldown_is_one_noread_with_its_view() -> None:
    tracker = NoReadTracker(cooldown_s=1.0)
    # a label moving 20 px a frame at 10 Hz, never read: one track, reported once, after the cooldown
    steps = [result(i / 10, unread=[(100 + 20 * i, 120)]) for i in range(25)]
    out = run(tracker, steps)
    assert len(out) == 1
    nr = out[0]
    assert nr.t == 0.0  # all views equal in size: the first is kept
    assert nr.sightings == 11 and nr.error == "checksum" and (nr.frame_width, nr.frame_height) == (W, H)
    x0, y0 = nr.origin
    assert nr.image.shape[0] > 80 and nr.image.shape[1] > 80  # the symbol and a margin around it
    assert x0 <= nr.polygon[0][0] and y0 <= nr.polygon[0][1]
    assert tracker.flush() == []  # already reported: not again at the end


def test_a_read_near_it_within_the_cooldown_clears_it_before_and_after() -> None:
    tracker = NoReadTracker(cooldown_s=1.0)
    # unread, then read further along the belt 0.6 s later: the same label, no no-read
    steps = [result(i / 10, unread=[(100 + 20 * i, 120)]) for i in range(6)]
    steps += [result(0.6, reads=[(220, 120)])]
    steps += [result(0.7 + i / 10, unread=[(240 + 20 * i, 120)]) for i in range(5)]  # unread after a read
    steps += [result(3.0 + i / 10) for i in range(5)]
    assert run(tracker, steps) == []
    assert tracker.flush() == []


def test_the_next_label_read_in_the_same_spot_does_not_hide_a_noread() -> None:
    tracker = NoReadTracker(cooldown_s=5.0)
    steps = [result(i / 10, unread=[(300, 100)]) for i in range(10)]  # a torn label, then it leaves
    steps += [result(1.0 + i / 10) for i in range(4)]  # a gap with nothing located
    steps += [result(1.4 + i / 10, reads=[(305, 100)]) for i in range(10)]  # the next part's label, read
    out = run(tracker, steps) + tracker.flush()
    assert len(out) == 1 and out[0].polygon == square(300, 100)


def test_read_of_another_code_far_away_does_not_hide_a_noread() -> None:
    tracker = NoReadTracker(cooldown_s=0.5)
    steps = [result(i / 10, reads=[(20, 20)], unread=[(450, 250)]) for i in range(8)]
    out = run(tracker, steps)
    assert len(out) == 1 and out[0].polygon == square(450, 250)


def test_end_of_video_decides_what_is_pending() -> None:
    tracker = NoReadTracker(cooldown_s=5.0)
    assert run(tracker, [result(0.1 * i, unread=[(300, 100)]) for i in range(3)]) == []
    out = tracker.flush()
    assert len(out) == 1 and out[0].sightings == 3


def test_tracks_are_bounded() -> None:
    tracker = NoReadTracker(cooldown_s=100.0, max_tracks=4)
    # ten labels in ten places, none read: memory stays bounded, the extra ones are decided early
    out = run(tracker, [result(float(i), unread=[(10 + 60 * i, 10 + 100 * (i % 2))], s=20) for i in range(10)])
    assert len(out) == 6
    assert len(tracker.flush()) == 4


def damaged_frame(t: float) -> GrayFrame:
    """A real QR label with its finder-less corner torn off: located, not decodable."""
    img = np.full((H, W), 120, np.uint8)
    q = qr_image("CID-NOREAD-1", 6)
    n = q.shape[0]
    cv2.fillPoly(q, [np.array([[n, n], [n - int(0.75 * n), n], [n, n - int(0.75 * n)]], np.int32)], 120)
    img[60 : 60 + n, 200 : 200 + n] = q
    return GrayFrame(img, t, 1000 + t)


def test_detector_and_tracker_on_a_torn_label() -> None:
    det = Detector(DetectorConfig())
    tracker = NoReadTracker(cooldown_s=0.3)
    out: list[NoRead] = []
    for i in range(6):
        f = damaged_frame(i / 10)
        r = det.detect(f)
        assert list(r) == [] and len(r.unread) == 1  # located, not read, by every stage of the cascade
        out += tracker.observe(f, r)
    assert len(out) == 1


def make_noread(wall: float, size: int = 120) -> NoRead:
    rng = np.random.default_rng(int(wall))
    img = rng.integers(0, 255, (size, size), np.uint8)  # noise: JPEG cannot shrink it much
    return NoRead(1.0, wall, square(120, 70, size - 40), "checksum", W, H, img, (100, 50), 3)


def test_store_keeps_the_newest_within_count_and_bytes(tmp_path: Path) -> None:
    store = NoReadStore(tmp_path / "nr", max_files=3, max_bytes=10**9)
    assert not (tmp_path / "nr").exists() and store.entries() == []
    for i in range(5):
        assert store.save(make_noread(1_800_000_000 + i)) is not None
    kept = store.entries()
    assert [e.wall for e in kept] == [1_800_000_002, 1_800_000_003, 1_800_000_004]
    img = cv2.imread(kept[0].image)
    assert img is not None and img.shape[:2] == (120, 120)
    b, g, r = (img[:, :, i].astype(int) for i in range(3))
    red = (r - np.maximum(g, b)) > 80
    assert red.sum() > 100  # the outline is drawn
    size = sum(f.stat().st_size for f in (tmp_path / "nr").iterdir())
    store.max_bytes, store.max_files = size // 2, 100
    store.save(make_noread(1_800_000_010))
    after = sum(f.stat().st_size for f in (tmp_path / "nr").iterdir())
    assert after <= size // 2 and store.entries()[-1].wall == 1_800_000_010
    n = len(store.entries())
    assert n >= 1 and store.clear() == n
    assert store.entries() == [] and list((tmp_path / "nr").iterdir()) == []


def test_store_with_max_files_zero_keeps_nothing(tmp_path: Path) -> None:
    store = NoReadStore(tmp_path / "nr", max_files=0, max_bytes=10**6)
    assert store.save(make_noread(1_800_000_000)) is None and not (tmp_path / "nr").exists()


def cli(*args: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT")}
    return agent_process.run(["noreads", "--config", str(cfg), *args],
                             capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.slow
def test_command_lists_and_clears(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"spool:\n  dir: {tmp_path / 'state' / 'spool'}\n", encoding="utf-8")
    empty = cli(cfg=cfg)
    assert empty.returncode == 0 and "no no-reads" in empty.stdout
    assert str(tmp_path / "state" / "noreads") in empty.stdout
    store = NoReadStore(tmp_path / "state" / "noreads", 10, 10**7)  # the default: beside the spool
    saved = [store.save(make_noread(1_800_000_000 + i)) for i in range(2)]
    listed = cli(cfg=cfg)
    assert listed.returncode == 0, listed.stderr
    assert "2 no-read(s)" in listed.stdout and all(s is not None and s.image in listed.stdout for s in saved)
    data = json.loads(cli("--json", cfg=cfg).stdout)
    assert [e["image"] for e in data["noreads"]] == [s.image for s in saved if s]
    assert data["noreads"][0]["at"] == "2027-01-15T08:00:00Z" and data["noreads"][0]["polygon"][0] == [120, 70]
    cleared = cli("--clear", cfg=cfg)
    assert cleared.returncode == 0 and "deleted 2" in cleared.stdout and store.entries() == []
