"""A Pi CSI camera through picamera2: the camera's H.264 goes to the ring, its lores picture to the
detector, nothing is decoded. There is no Pi here: picamera2 is played by a stand-in with its exact
interface (tests/picamera2_standin), which plays a recorded Annex-B H.264 file as the encoder's output
and the same file, decoded and scaled, as the lores stream."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import av
import numpy as np
import pytest

from edge_agent.capture.media import GrayFrame, Packet
from edge_agent.capture.source import SourceError, make_source
from edge_agent.config import parse_config
from edge_agent.delivery.sinks import FolderSink
from edge_agent.pipeline.events import EventSnapshot
from edge_agent.pipeline.wiring import Pipeline
from tests.cli_in_process import Cli
from tests.media_factory import make_video

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "picamera2_standin"
CID = "CID-PICAM-01"
LORES = (600, 338)  # not a multiple of 64: the stand-in pads rows to a 64-byte stride, as a Pi does


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What H264Encoder(repeat=True, iperiod=30) writes: Annex-B, no B-frames, SPS/PPS at each keyframe."""
    return make_video(tmp_path_factory.mktemp("media") / "camera.h264", seconds=8, fps=30, size=(960, 540),
                      gop=30, bframes=0, fmt="h264", codes=[(CID, 2.0, 3.5)])


@pytest.fixture
def camera(recording: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setenv("PICAMERA2_STANDIN_VIDEO", str(recording))
    monkeypatch.setenv("PICAMERA2_STANDIN_CACHE", str(tmp_path))
    for name in [m for m in sys.modules if m == "picamera2" or m.startswith("picamera2.")]:
        monkeypatch.delitem(sys.modules, name)
    return recording


def config(extra: str = ""):
    return parse_config("source:\n  kind: picamera2\n  fps: 30\n  picamera2:\n    width: 960\n    height: 540\n"
                        f"    lores_width: {LORES[0]}\n    lores_height: {LORES[1]}\n{extra}", env={})


@pytest.mark.slow
def test_packets_are_the_encoders_and_pictures_the_lores_y_plane_on_one_clock(camera: Path) -> None:
    src = make_source(config().source)
    info = src.open()
    assert (info.codec, info.width, info.height) == ("h264", 960, 540) and src.gives_pictures
    packets: list[Packet] = []
    pictures: list[GrayFrame] = []
    try:
        for item in src.packets():
            (pictures if isinstance(item, GrayFrame) else packets).append(item)
            if len(pictures) >= 45:
                break
    finally:
        src.close()
    with av.open(str(camera), format="h264") as f:
        recorded = [bytes(p) for p in f.demux(video=0) if p.size]
    # the ring gets the encoder's bytes unchanged, from the first keyframe on, in order
    assert packets[0].keyframe and [p.data for p in packets] == recorded[: len(packets)]
    gaps = np.diff([p.t for p in packets])
    assert np.allclose(gaps, 1 / 30, atol=0.004), gaps  # sensor timestamps, not arrival times
    # the detector's picture: the lores Y plane, without stride padding or chroma rows
    assert all(p.gray.shape == (LORES[1], LORES[0]) for p in pictures)
    k = round((pictures[0].t - packets[0].t) * 30)  # the frame the first picture shows, on the same clock
    with av.open(str(camera), format="h264") as f:
        for i, frame in enumerate(f.decode(video=0)):
            if i == k:
                first = frame.reformat(width=LORES[0], height=LORES[1], format="gray").to_ndarray()
                break
    assert np.abs(pictures[0].gray.astype(int) - first.astype(int)).mean() < 3


def test_a_missing_picamera2_is_one_line_with_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # not installed: the import fails
    with pytest.raises(SourceError) as err:
        make_source(config().source).open()
    text = str(err.value)
    assert "\n" not in text and "python3-picamera2" in text and "--system-site-packages" in text


@pytest.mark.slow
def test_the_pipeline_detects_from_lores_and_clips_the_cameras_own_packets(camera: Path, tmp_path: Path) -> None:
    cfg = config("clip:\n  pre_roll_s: 1.0\n  post_roll_s: 1.0\n")
    heard: list[EventSnapshot] = []
    pipeline = Pipeline(cfg, FolderSink(tmp_path / "clips"), on_event=heard.append)
    began = time.time()
    pipeline.start()
    deadline = time.monotonic() + 30
    while not (heard and heard[0].clip) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pipeline.stop(10)
    status = pipeline.status()
    assert heard and heard[0].cid == CID and heard[0].clip and not heard[0].clip_error, heard
    assert status.decode.decoded == 0 and status.detect.frames_analysed > 0  # detection saw lores, nothing decoded
    # only the pictures picked for the detector (detector.rate_hz of the camera's 30 fps) left the camera's buffers
    picked = status.detect.frames_analysed + pipeline.metrics.get("edge_agent_frames_skipped_total")
    assert sys.modules["picamera2"].BUFFER_READS.get("lores") == picked
    assert picked < status.capture.frames * (cfg.detector.rate_hz + 1) / 30
    # the sensor's time carried to the wall clock: seen while the camera ran, not on some other clock
    detected = datetime.fromisoformat(heard[0].detected_at.replace("Z", "+00:00")).timestamp()
    assert began < detected < time.time(), heard[0].detected_at
    with av.open(str(camera), format="h264") as f:
        recorded = {bytes(p) for p in f.demux(video=0) if p.size}
    with av.open(str(tmp_path / "clips" / f"{heard[0].event_id}.mp4")) as c:
        clip = [p for p in c.demux(video=0) if p.size]
    with av.open(str(tmp_path / "clips" / f"{heard[0].event_id}.mp4")) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert clip and decoded == len(clip)
    # remuxed, not re-encoded: each clip packet is one of the camera's (AVCC in MP4, Annex-B from the
    # encoder: the same NAL units behind a different framing)
    camera_slices = {_slices(r, annexb=True) for r in recorded}
    assert sum(_slices(bytes(p), annexb=False) in camera_slices for p in clip) == len(clip)


def _slices(data: bytes, annexb: bool) -> bytes:
    """The slice NAL units of a packet, framing dropped (Annex-B start codes, or MP4's 4-byte lengths)."""
    if annexb:
        nals = [n for n in data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01") if n]
    else:
        nals, i = [], 0
        while i + 4 <= len(data):
            n = int.from_bytes(data[i:i + 4], "big")
            nals.append(data[i + 4:i + 4 + n])
            i += 4 + n
    return b"".join(n for n in nals if n[0] & 0x1F in (1, 5))


def _camera_config(tmp_path: Path) -> Path:
    """A picamera2 config; `check` and `snapshot` run through the CLI's entry point in this process, where
    the `camera` fixture has put the stand-in where picamera2 would be."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("source:\n  kind: picamera2\n  fps: 30\n  picamera2:\n    width: 960\n    height: 540\n"
                   f"    lores_width: {LORES[0]}\n    lores_height: {LORES[1]}\n"
                   f"spool:\n  dir: {tmp_path / 'spool'}\n")
    return cfg


@pytest.mark.slow
def test_check_reads_the_camera_and_the_code_from_lores(camera: Path, tmp_path: Path, in_process: Cli) -> None:
    out = in_process("check", "-c", str(_camera_config(tmp_path)), "--seconds", "20")
    lines = {ln.split()[1]: ln for ln in out.stdout.splitlines() if ln.startswith(("PASS", "FAIL", "WARN", "SKIP"))}
    assert lines["source"].startswith("PASS") and "h264 960x540" in lines["source"], out.stdout + out.stderr
    assert "detection decodes" not in lines["source"]  # no keyframe window: the video is not decoded at all
    assert "lores" in lines["detector"] and CID in lines["detector"], out.stdout + out.stderr


@pytest.mark.slow
def test_snapshot_takes_the_cameras_lores_picture(camera: Path, tmp_path: Path, in_process: Cli) -> None:
    out = in_process("snapshot", "-c", str(_camera_config(tmp_path)), "-o",
                         str(tmp_path / "snap.jpg"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{LORES[0]}x{LORES[1]}" in out.stdout
    import cv2

    assert cv2.imread(str(tmp_path / "snap.jpg")).shape[:2] == (LORES[1], LORES[0])
