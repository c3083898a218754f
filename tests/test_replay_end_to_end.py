"""The whole pipeline on every sample video, through the real CLI, into a real edge server on
127.0.0.1: exactly the manifest's CIDs arrive, each with a clip that decodes as H.264, covers its
detection and shows exactly pre-roll + post-roll (the keyframe lead-in hidden by the MP4 edit list)."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import pytest
import zxingcpp

from edge_agent import const
from tests import agent_process
from tests.label_video import make_label_video
from tests.media_factory import make_video
from tests.receiver_fixture import ReceiverProcess

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_media"
MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())
GOP_S = 1.0  # the samples carry a keyframe every second
FRAME_S = 1 / 30
PRE, POST = const.PRE_ROLL_S, const.POST_ROLL_S


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def edge_agent(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return agent_process.run([*args], capture_output=True, text=True,
                             cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout, check=False)


def write_config(path: Path, url: str, spool: Path, extra: str = "") -> Path:
    path.write_text(f"device_id: line-3-cam\nupload:\n  url: {url}\n  backoff_base_s: 0.2\n"
                    f"spool:\n  dir: {spool}\n{extra}", encoding="utf-8")
    return path


SMALL_CIDS = ["CID-REPLAY-1", "CID-REPLAY-2"]


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two labels with a full clip each, small and short: for what replay does around the pipeline,
    which the samples above already prove on real footage."""
    return make_video(tmp_path_factory.mktemp("media") / "small.mp4", seconds=8, size=(320, 240),
                      codes=[(SMALL_CIDS[0], 2.6, 3.2), (SMALL_CIDS[1], 4.0, 4.6)], scale=4)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with ReceiverProcess(tmp_path_factory.mktemp("receiver")) as r:
        yield r


@pytest.mark.slow
@pytest.mark.parametrize("video", MANIFEST["videos"], ids=lambda v: v["file"])
def test_replay_delivers_exactly_the_manifest_cids_with_valid_clips(
        video: dict[str, Any], receiver: ReceiverProcess, tmp_path: Path) -> None:
    before = {e["event_id"] for e in receiver.events()}
    cfg = write_config(tmp_path / "config.yaml", receiver.cid_url, tmp_path / "spool")
    report_path = tmp_path / "report.json"
    res = edge_agent("replay", "--config", str(cfg), "--report", str(report_path), str(SAMPLES / video["file"]))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(report_path.read_text())

    events = [e for e in receiver.events() if e["event_id"] not in before]
    assert sorted(e["cid"] for e in events) == sorted(video["cids"])  # each CID once, nothing else
    assert report["uploaded"] == len(video["cids"]) and all(e["uploaded"] for e in report["events"])
    assert report["frames"] == round(video["duration_s"] * video["fps"])
    if video.get("rejected_payloads"):
        assert report["rejected"] > 0

    for e in events:
        meta = e["metadata"]
        assert e["idempotency_key"] == meta["event_id"] == e["event_id"]
        assert meta["device_id"] == "line-3-cam" and meta["cid"] == e["cid"]
        assert e["sha256_ok"] is True and e["sha256"] == meta["clip"]["sha256"]
        clip_path = receiver.data_dir / e["video_file"]
        with av.open(str(clip_path)) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert (stream.codec_context.width, stream.codec_context.height) == (video["width"], video["height"])
            decoded = [(f.time, f) for f in c.decode(stream)]
        assert len(decoded) == meta["clip"]["frames"]

        detected, last = ts(meta["detected_at"]), ts(meta["detection"]["last_detected_at"])
        start, end = ts(meta["clip"]["start_at"]), ts(meta["clip"]["end_at"])
        assert start <= detected <= end  # the clip covers its detection
        assert detected <= last  # a label still in view is the same event; its clip does not grow
        assert abs(meta["clip"]["duration_s"] - (PRE + POST)) <= FRAME_S + 0.001, meta
        assert abs(meta["clip"]["frames"] - round((PRE + POST) / FRAME_S)) <= 1, meta
        assert 0 <= meta["clip"]["lead_in_s"] < GOP_S and "truncated" not in meta["clip"]
        assert abs(detected - start - PRE) <= FRAME_S + 0.001  # the full pre-roll is there
        # detected_at is the capture time of the frame the code was found in: that frame shows it
        at = detected - start
        _, frame = min(decoded, key=lambda tf: abs(tf[0] - at))
        found = {b.text for b in zxingcpp.read_barcodes(frame.to_ndarray(format="gray"))}
        assert e["cid"] in found

    for payload in video.get("rejected_payloads", []):
        assert all(payload not in json.dumps(e) for e in events)


@pytest.mark.slow
def test_replay_with_no_config_writes_clips_to_a_local_folder(small_video: Path, tmp_path: Path) -> None:
    res = edge_agent("replay", str(small_video), cwd=tmp_path, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert res.returncode == 0, res.stderr[-3000:]
    metas = [json.loads(p.read_text()) for p in sorted((tmp_path / "clips").glob("*.json"))]
    assert sorted(m["cid"] for m in metas) == SMALL_CIDS
    for m in metas:
        assert (tmp_path / "clips" / f"{m['event_id']}.mp4").stat().st_size == m["clip"]["size_bytes"]
    assert "rejected payloads" in res.stdout and "clips" in res.stdout  # the summary table


@pytest.mark.slow
def test_replay_of_several_files_cuts_each_files_last_clips_from_its_own_frames(tmp_path: Path) -> None:
    """Each file's last labels are read after capture has moved on to the next file (detection lags it): their
    clips still come from their own file (its size tells), cut short where that file ends."""
    sizes = {"a.mp4": (640, 360), "b.mp4": (480, 272), "c.mp4": (320, 192)}
    for name, size in sizes.items():  # labels at 1..5 s of 6 s: the last two end past the file's end
        make_label_video(tmp_path / name, seconds=6, per_s=1, size=size)
    res = edge_agent("replay", "--output-dir", str(tmp_path / "out"), *(str(tmp_path / n) for n in sizes),
                     cwd=tmp_path, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert res.returncode == 0, res.stderr[-3000:]
    metas = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert len(metas) == 15 and all("error" not in m["clip"] for m in metas), [m["clip"] for m in metas]
    for width, height in sizes.values():  # each file's five labels, each clip of that file's size
        mine = sorted((m for m in metas if m["clip"]["width"] == width), key=lambda m: m["cid"])
        assert [m["cid"] for m in mine] == [f"CID-L{i:04d}" for i in range(5)], (width, [m["cid"] for m in mine])
        for i, m in enumerate(mine):
            assert m["clip"]["height"] == height
            with av.open(str(tmp_path / "out" / f"{m['event_id']}.mp4")) as clip:
                frame = next(clip.decode(video=0))
                assert (frame.width, frame.height) == (width, height)
            if i >= 3:  # its file ends before its post-roll does
                assert m["clip"]["truncated"] == "end_of_video"
                assert m["clip"]["duration_s"] == pytest.approx(6.0 - (1.0 + i - 2.5), abs=0.05)


@pytest.mark.slow
def test_replay_exits_75_when_the_server_is_down_and_keeps_the_clips(small_video: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9/cid", tmp_path / "spool")
    res = edge_agent("replay", "--config", str(cfg), "--drain-timeout", "1", str(small_video))
    assert res.returncode == const.EXIT_QUEUED, res.stderr[-3000:]
    assert "still queued" in res.stderr
    assert len(list((tmp_path / "spool").rglob("*.mp4"))) == len(SMALL_CIDS)


@pytest.mark.slow
def test_replay_refuses_a_bad_config_with_its_location(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("clip:\n  pre_rol_s: 3\n", encoding="utf-8")
    res = edge_agent("replay", "--config", str(cfg), str(SAMPLES / MANIFEST["videos"][0]["file"]))
    assert res.returncode == 78
    assert f"{cfg}:2:3: clip.pre_rol_s: unknown key (did you mean pre_roll_s?)" in res.stderr


@pytest.mark.slow
def test_replay_of_a_file_that_is_not_video_fails_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    res = edge_agent("replay", "--no-upload", "--output-dir", str(tmp_path / "out"), str(junk))
    assert res.returncode == 65
    assert "junk.mp4" in res.stderr
