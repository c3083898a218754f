"""Two recordings joined in one file (MPEG-TS files concatenated byte for byte, each with timestamps from
the start again): every label of the second is found, its clip is made, and detected_at never runs
backwards. The capture clock carries on across the join; the frame picker, fed capture times that go
back, starts afresh."""

from __future__ import annotations

import json
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edge_agent.capture.clock import PtsClock
from edge_agent.pipeline.decode import FramePicker
from tests import agent_process
from tests.media_factory import make_video

ROOT = Path(__file__).resolve().parent.parent


def ts(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_the_frame_picker_starts_afresh_when_capture_time_goes_back() -> None:
    picker = FramePicker()
    first = [picker.pick(i / 30, 10.0) for i in range(300)]  # 10 s at 30 fps: one pick per 100 ms
    assert sum(first) == 100
    again = [picker.pick(i / 30, 10.0) for i in range(90)]  # the same 3 s again
    assert sum(again) == 30 and picker.jumps == 1
    # B-frame reordering (a few frames back) is not a jump
    picker = FramePicker()
    for t in (0.0, 0.1, 0.2, 0.133, 0.166, 0.3, 0.233, 0.266, 0.4):
        picker.pick(t, 10.0)
    assert picker.jumps == 0


def test_a_files_timestamps_that_go_back_carry_the_capture_clock_on() -> None:
    clock = PtsClock(Fraction(1, 90_000), arrival_anchored=False, frame_s=1 / 30)
    ts_ = [clock.stamp(pts, 0.0) for pts in [*range(0, 900_000, 3000), *range(0, 90_000, 3000)]]
    assert all(b > a for a, b in zip(ts_, ts_[1:], strict=False))  # never back
    assert abs(ts_[300] - (ts_[299] + 1 / 30)) < 1e-9 and clock.rewinds == 1
    assert abs(clock.last_rewind_s - (ts_[299] - 0.0)) < 1e-9
    assert abs((ts_[-1] - ts_[300]) - 29 / 30) < 1e-9  # media time within each recording


@pytest.mark.slow
def test_a_label_early_in_the_second_of_two_joined_recordings_is_found(tmp_path: Path) -> None:
    one = make_video(tmp_path / "one.ts", seconds=8, fmt="mpegts", size=(480, 270),
                     codes=[("CID-0F1257A1", 1.0, 2.5)])
    two = make_video(tmp_path / "two.ts", seconds=8, fmt="mpegts", size=(480, 270),
                     codes=[("CID-0F1257B2", 1.0, 2.5)])
    joined = tmp_path / "joined.ts"
    joined.write_bytes(one.read_bytes() + two.read_bytes())
    with av.open(str(joined)) as c:  # the file really goes back in time at the join
        pts = [p.pts for p in c.demux(c.streams.video[0]) if p.pts is not None]
    assert min(pts[len(pts) // 2 + 5:]) < max(pts[: len(pts) // 2 - 5])

    out = tmp_path / "clips"
    res = agent_process.run(["replay", "--output-dir", str(out), str(joined)],
                            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "XDG_STATE_HOME": str(tmp_path / "state"),
                                 "PYTHONPATH": str(ROOT)})
    metas = sorted((json.loads(p.read_text()) for p in out.glob("*.json")), key=lambda m: m["detected_at"])
    print(f"\njoined recordings: found {[m['cid'] for m in metas]}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert [m["cid"] for m in metas] == ["CID-0F1257A1", "CID-0F1257B2"], res.stderr[-3000:]
    first, second = metas
    assert 8.0 - 0.2 <= ts(second["detected_at"]) - ts(first["detected_at"]) <= 8.0 + 0.2  # never backwards
    assert "error" not in second["clip"] and second["clip"]["frames"] > 0
    assert res.stderr.count("timestamps went back") == 1  # logged once
