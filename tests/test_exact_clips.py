"""With no clip settings a label passing the camera gives a clip of exactly pre-roll + post-roll
(5.0 s, 150 frames at 30 fps), remuxed, whatever the keyframe interval: the file starts on the
keyframe before the wanted start and an MP4 edit list hides that lead-in. Checked the way
receivers read clips: PyAV, ffprobe (when installed), OpenCV."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import av
import cv2
import pytest

from edge_agent import const
from tests import agent_process
from tests.media_factory import make_video

FPS = 30
WANT_S = const.PRE_ROLL_S + const.POST_ROLL_S
WANT_FRAMES = round(WANT_S * FPS)


def replay(video: Path, cwd: Path) -> list[dict]:
    """`edge-agent replay` with no config at all: clips land in ./clips with their metadata."""
    res = agent_process.run(["replay", str(video)], cwd=cwd,
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "XDG_STATE_HOME": str(cwd / "state")})
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted((cwd / "clips").glob("*.json"))]


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames,duration:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)


@pytest.mark.parametrize(("gop", "bframes"), [(30, 0), (120, 0), (30, 3)],
                         ids=["keyframe-1s", "keyframe-4s", "keyframe-1s-b-frames"])
@pytest.mark.slow
def test_a_label_passing_gives_exactly_five_seconds(gop: int, bframes: int, tmp_path: Path) -> None:
    # a 30 fps conveyor (the frame size is not the subject: timing is, so a small frame keeps it quick);
    # the label is in view 4.2 s .. 7.2 s, so re-detection goes on for 3 s
    video = make_video(tmp_path / "conveyor.mp4", seconds=10, fps=FPS, size=(640, 360), gop=gop,
                       codes=[("CID-EXACT-1", 4.2, 7.2)], bframes=bframes)
    (meta,) = replay(video, tmp_path)
    clip = tmp_path / "clips" / f"{meta['event_id']}.mp4"
    info = meta["clip"]
    assert meta["detection"]["hits"] > 1  # seen again while in view, and still one clip of 5 s
    assert abs(info["duration_s"] - WANT_S) <= 0.05 and abs(info["frames"] - WANT_FRAMES) <= 1, info
    assert 0 <= info["lead_in_s"] < gop / FPS and "truncated" not in info

    with av.open(str(clip)) as c:  # PyAV: decoded frames and the stream's presented duration
        v = c.streams.video[0]
        times = [f.time for f in c.decode(v)]
        frames = len(times)
        duration = float(v.duration * v.time_base)
    assert [round(t * FPS) for t in times] == list(range(frames))  # every frame, none twice, no gap
    with av.open(str(clip)) as c:
        v = c.streams.video[0]
        packets = [p for p in c.demux(v) if p.size]
    assert packets[0].is_keyframe  # remuxed: it starts on the camera's own keyframe
    hidden = sum(p.is_discard for p in packets)
    lead_in = sum(p.is_discard and p.pts < min(q.pts for q in packets if not q.is_discard) for p in packets)
    assert abs(lead_in / FPS - info["lead_in_s"]) <= 1 / FPS  # the lead-in is in the file, hidden
    assert hidden - lead_in <= bframes  # past the end: only a reference picture the last B-frames need
    assert abs(frames - WANT_FRAMES) <= 1 and frames == info["frames"]
    assert abs(duration - WANT_S) <= 0.05

    cap = cv2.VideoCapture(str(clip))  # OpenCV reads what is presented
    read = 0
    while cap.read()[0]:
        read += 1
    # CAP_PROP_FRAME_COUNT is the MP4 sample count, which includes the hidden lead-in
    counted = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    cap.release()
    assert read == frames
    assert counted == frames + hidden

    if shutil.which("ffprobe"):
        probe = ffprobe(clip)
        assert int(probe["streams"][0]["nb_read_frames"]) == frames
        assert abs(float(probe["streams"][0]["duration"]) - WANT_S) <= 0.05
        assert abs(float(probe["format"]["duration"]) - WANT_S) <= 0.05


@pytest.mark.slow
def test_extension_while_in_view_is_opt_in(tmp_path: Path) -> None:
    video = make_video(tmp_path / "conveyor.mp4", seconds=12, fps=FPS, size=(640, 360), gop=30,
                       codes=[("CID-EXTEND-1", 4.2, 7.2)])
    cfg = tmp_path / "config.yaml"
    # max_blind_s 0: the subject is the first and last sighting exactly, not the keyframe window's trade
    cfg.write_text(f"clip:\n  extend_while_in_view: true\ndetector:\n  max_blind_s: 0\nspool:\n"
                   f"  dir: {tmp_path / 'spool'}\n", encoding="utf-8")
    res = agent_process.run(["replay", "--config", str(cfg), "--report",
                             str(tmp_path / "report.json"), str(video)], capture_output=True, text=True, timeout=300,
                            check=False, env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert res.returncode == 0, res.stderr[-3000:]
    (event,) = json.loads((tmp_path / "report.json").read_text())["events"]
    # in view 3 s: the clip runs from 2.5 s before the first sighting to 2.5 s after the last
    assert 7.5 <= event["clip"]["duration_s"] <= 8.1, event["clip"]


@pytest.mark.slow
def test_a_start_a_rounding_error_before_a_keyframe_is_remuxed_on_that_keyframe(tmp_path: Path) -> None:
    """Detected at 4.6 s with a 1.6 s pre-roll: 4.6 - 1.6 is 2.9999999999999996 in floating point, a
    hair before the keyframe at 3.0 s. The clip starts on that keyframe (no earlier GOP kept as a
    lead-in, which FFmpeg's reader drops) and is remuxed, its 120 frames [3.0 s, 7.0 s) presented."""
    video = make_video(tmp_path / "edge.mp4", seconds=10, fps=FPS, gop=FPS, codes=[("CID-EDGE-1", 4.6, 6.0)])
    config = tmp_path / "edge.yaml"
    # max_blind_s 0: detected at 4.6 s exactly, which the keyframe window would leave undecoded
    config.write_text("detector:\n  rate_hz: 30\n  max_blind_s: 0\nclip:\n  pre_roll_s: 1.6\n  post_roll_s: 2.4\n",
                      encoding="utf-8")
    res = agent_process.run(["replay", "--config", str(config), str(video)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "t=4.600" in res.stderr  # the detection the float edge comes from
    assert "remux failed" not in res.stderr, res.stderr[-2000:]
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "clips").glob("*.json")]
    info = meta["clip"]
    assert "encoder=" not in next(line for line in res.stderr.splitlines() if "clip ready" in line)
    assert info["frames"] == 120 and info["lead_in_s"] == 0.0, info
    clip = tmp_path / "clips" / f"{meta['event_id']}.mp4"
    with av.open(str(clip)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    with av.open(str(clip)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="gray")
    assert len(packets) == 120 and packets[0].is_keyframe  # no lead-in at all: it starts on the keyframe
    with av.open(str(video)) as c:  # and that keyframe is the source's frame at 3.0 s
        want = next(f for i, f in enumerate(c.decode(video=0)) if i == 90).to_ndarray(format="gray")
    assert cv2.absdiff(first, want).mean() < 3
