"""A Pi CSI camera through picamera2: the camera's H.264 goes to the ring, its lores picture to the
detector, nothing is decoded. There is no Pi here: picamera2 is played by a stand-in with its interface and
its job queue (tests/picamera2_standin), which plays a recorded Annex-B H.264 file as the encoder's output
and the same file, decoded and scaled, as the lores stream; the test environment makes its camera stall,
its encoder hang, or its import fail as libcamera's bindings and simplejpeg fail on a device."""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from edge_agent.capture import picamera2_source
from edge_agent.capture.consumer import Route
from edge_agent.capture.media import CameraPicture, GrayFrame, Packet
from edge_agent.capture.picamera2_source import CLOSE_TIMEOUT_S
from edge_agent.capture.session import Session, SourceError
from edge_agent.capture.source import make_source
from edge_agent.capture.supervisor import CaptureSupervisor
from edge_agent.config import parse_config
from edge_agent.delivery.sinks import FolderSink
from edge_agent.metrics import Metrics
from edge_agent.pipeline.events import EventSnapshot
from edge_agent.pipeline.wiring import Pipeline
from edge_agent.stage import FailureBox, StageThread
from tests.cli_in_process import Cli
from tests.media_factory import make_video
from tests.metric_values import value

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
    """The stand-in where picamera2 would be, imported afresh (with its libcamera and simplejpeg) so the
    PICAMERA2_STANDIN_* variables a test sets apply."""
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setenv("PICAMERA2_STANDIN_VIDEO", str(recording))
    monkeypatch.setenv("PICAMERA2_STANDIN_CACHE", str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("picamera2", "libcamera", "simplejpeg")]:
        monkeypatch.delitem(sys.modules, name)
    return recording


def config(extra: str = "", fps: float = 30, stall_s: float = 10, model: str = "auto"):
    return parse_config(f"source:\n  kind: picamera2\n  fps: {fps}\n  stall_s: {stall_s}\n  picamera2:\n"
                        f"    model: {model}\n    width: 960\n    height: 540\n"
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


# What fails where the agent imports picamera2 on a device, made to fail the same way by the stand-in's
# libcamera and simplejpeg: (variable, value, the cause the line must carry, the hint it must give)
IMPORT_FAILURES = [
    ("PICAMERA2_STANDIN_SIMPLEJPEG_NUMPY", "1", "ValueError: numpy.dtype size changed", "numpy<2"),
    ("PICAMERA2_STANDIN_LIBCAMERA", "older", "AttributeError:", "python3-picamera2"),
    ("PICAMERA2_STANDIN_LIBCAMERA", "unloadable", "OSError: libpisp.so.1", "python3-picamera2"),
    ("PICAMERA2_STANDIN_LIBCAMERA", "mismatched", "ImportError: libcamera.so.0.4", "python3-picamera2"),
    ("PICAMERA2_STANDIN_LIBCAMERA", "absent", "ModuleNotFoundError: No module named 'libcamera'", "--system-site"),
]


@pytest.mark.parametrize(("var", "value", "cause", "hint"), IMPORT_FAILURES,
                         ids=[f"{v}={x}" for v, x, *_ in IMPORT_FAILURES])
def test_a_camera_stack_that_fails_to_import_is_one_line_with_its_cause_and_hint(
        camera: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, cause: str, hint: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SourceError) as err:
        make_source(config().source).open()
    text = str(err.value)
    assert "\n" not in text and cause in text and hint in text, text


class _Counting:
    """A route's consumers: packets counted, pictures taken (copied) as the decode stage takes them."""

    def __init__(self) -> None:
        self.packets = 0
        self.pictures = 0

    def offer(self, pkt: Packet) -> None:
        self.packets += 1

    def end(self) -> None:
        pass

    def status(self) -> Any:
        return None

    def offer_picture(self, picture: CameraPicture) -> None:
        picture.take()
        self.pictures += 1


def _capture_stage(cfg: Any) -> tuple[CaptureSupervisor, StageThread, FailureBox, _Counting]:
    """The capture stage on its thread, as the pipeline runs it, handing everything to a counter."""
    counting = _Counting()
    failures = FailureBox()

    def route(src: Session, n: int) -> Route:
        return Route([counting], counting)

    sup = CaptureSupervisor(cfg, Metrics(), failures, route)
    thread = StageThread(sup, None, failures)
    thread.start()
    return sup, thread, failures, counting


def test_a_camera_stack_that_fails_to_import_is_retried_as_a_missing_one(
        camera: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PICAMERA2_STANDIN_SIMPLEJPEG_NUMPY", "1")  # the system's simplejpeg, numpy 2 in the venv
    caplog.set_level(logging.WARNING)
    sup, thread, failures, _ = _capture_stage(config())
    deadline = time.monotonic() + 15
    while value(sup.metrics, "edge_agent_source_errors_total") < 2 and time.monotonic() < deadline:
        if failures.event.wait(0.1):
            break
    sup.stop()
    assert thread.join(10)
    assert failures.failure is None, failures.failure  # the capture thread lived on
    assert value(sup.metrics, "edge_agent_source_errors_total") >= 2  # and tried again
    retried = [r.getMessage() for r in caplog.records if "source unavailable, retrying" in r.getMessage()]
    assert retried and "numpy.dtype size changed" in retried[0] and "\n" not in retried[0], caplog.text


STALL_AFTER = 15  # frames each start of the stand-in's camera completes before it stalls


def _session_read_on_a_thread() -> tuple[Session, threading.Thread, Any, Any]:
    """A session opened and read on a thread of its own, as the capture thread reads it; with the stand-in
    module and the camera it made."""
    src = make_source(config().source)
    src.open()
    picamera2 = sys.modules["picamera2"]
    reader = threading.Thread(target=src.read, args=(lambda item: True,), daemon=True)
    reader.start()
    return src, reader, picamera2, picamera2.CAMERAS[-1]


def _close_on_a_thread(src: Session) -> float | None:
    """Seconds `src.close()` took, or None when it had not returned CLOSE_TIMEOUT_S + 5 s later."""
    closing = threading.Thread(target=src.close, daemon=True)
    began = time.monotonic()
    closing.start()
    closing.join(CLOSE_TIMEOUT_S + 5)
    return None if closing.is_alive() else time.monotonic() - began


@pytest.mark.parametrize("frame_after_interrupt", [False, True], ids=["job-waiting", "job-holding-a-request"])
def test_a_stalled_camera_closes_and_gives_every_request_back(
        camera: Path, monkeypatch: pytest.MonkeyPatch, frame_after_interrupt: bool) -> None:
    """picamera2 queues its stop behind the session's capture job, which no frame completes; a frame that
    comes after the session ended completes the job, which then holds a request nobody takes."""
    monkeypatch.setenv("PICAMERA2_STANDIN_STALL_AFTER", str(STALL_AFTER))
    src, reader, picamera2, cam = _session_read_on_a_thread()
    # every frame processed, and the source waiting on its next capture job
    assert cam.standin_wait_jobs(1, timeout=10, processed=STALL_AFTER)
    src.interrupt()  # what the stall watch does after source.stall_s
    reader.join(5)
    assert not reader.is_alive()
    if frame_after_interrupt:
        cam.standin_deliver(1)
        assert cam.standin_wait_jobs(0, timeout=5, processed=STALL_AFTER + 1)
    took = _close_on_a_thread(src)
    assert took is not None, "close() waits behind picamera2's capture job"
    assert took < CLOSE_TIMEOUT_S  # stopped, not given up on
    assert cam.closed.is_set() and picamera2.requests_held() == 0
    picamera2.Picamera2(0).close()  # the camera was given back: it opens again


def test_a_stalled_camera_is_reopened_with_backoff(
        camera: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PICAMERA2_STANDIN_STALL_AFTER", str(STALL_AFTER))
    caplog.set_level(logging.INFO)
    picamera2 = importlib.import_module("picamera2")  # the stand-in, as the source will import it
    sup, thread, failures, counting = _capture_stage(config(stall_s=1))
    reopened = picamera2.wait_for_cameras(2, timeout=20)
    delivered = reopened and picamera2.CAMERAS[1].standin_wait_frames(STALL_AFTER, timeout=10)
    sup.stop()
    assert thread.join(10)
    assert reopened and delivered, caplog.text
    assert failures.failure is None
    assert counting.packets >= STALL_AFTER + 1 and counting.pictures > STALL_AFTER  # the second session's too
    text = caplog.text
    assert "source stalled" in text and "reopening with back-off" in text and "source back after" in text, text
    assert all(c.closed.is_set() for c in picamera2.CAMERAS) and picamera2.requests_held() == 0


def test_a_hung_encoder_holds_the_capture_thread_for_the_close_bound_only(
        camera: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The encoder waits for a buffer the hardware never gives back, holding picamera2's event loop and its
    lock: nothing picamera2 offers returns, so the capture thread gives up on the close after its bound."""
    monkeypatch.setenv("PICAMERA2_STANDIN_ENCODER_HANGS_AFTER", "10")
    caplog.set_level(logging.WARNING)
    src, reader, picamera2, cam = _session_read_on_a_thread()
    try:
        assert cam.standin_wait_frames(11, timeout=10)  # the 11th frame is the one the encoder hangs on
        src.interrupt()
        reader.join(5)
        took = _close_on_a_thread(src)
        assert took is not None, "close() hangs with picamera2"
        assert took >= CLOSE_TIMEOUT_S - 0.1
        assert f"did not stop in {CLOSE_TIMEOUT_S:g} s" in caplog.text
        # still held by picamera2's hung loop: opening it again fails as a busy camera does (and is retried)
        with pytest.raises(SourceError, match="did not complete"):
            make_source(config().source).open()
    finally:
        cam.standin_unhang()
    assert cam.closed.wait(10)  # the encoder came back: the close went on and gave the camera back
    again = make_source(config().source)
    again.open()
    again.close()
    assert picamera2.requests_held() == 0


def _pictures(cfg: Any, count: int) -> int:
    """Read a session until `count` lores pictures came; how many did."""
    src = make_source(cfg.source)
    src.open()
    pictures = 0
    try:
        for item in src.packets():
            pictures += isinstance(item, GrayFrame)
            if pictures >= count:
                break
    finally:
        src.close()
    return pictures


@pytest.fixture
def futures_of_python_310(monkeypatch: pytest.MonkeyPatch) -> None:
    """concurrent.futures as Python 3.10 (JetPack 6) has it: a Future's timeout is a TimeoutError of its own
    (deriving from concurrent.futures' Error), not the built-in one (they are one class from 3.11 on)."""

    class TimeoutError(concurrent.futures._base.Error):  # noqa: A001 (the name Python 3.10 gives it)
        pass

    monkeypatch.setattr(concurrent.futures._base, "TimeoutError", TimeoutError)
    monkeypatch.setattr(concurrent.futures, "TimeoutError", TimeoutError)


def test_waits_for_a_slow_camera_time_out_quietly_on_python_310(camera: Path, futures_of_python_310: None) -> None:
    """At 2 fps every wait for a picture outlasts the source's poll: each one ends in picamera2's
    TimeoutError, which must read as "no picture yet", not as a failed camera."""
    assert _pictures(config(fps=2), 3) == 3


def test_lores_pictures_are_mapped_read_only(camera: Path) -> None:
    """A mapping opened for writing syncs the buffer's cache for writing too at every picture copied."""
    assert _pictures(config(), 5) == 5
    syncs = sys.modules["picamera2"].BUFFER_SYNCS
    assert syncs.get(("lores", False), 0) >= 5 and syncs.get(("lores", True), 0) == 0, syncs


def test_a_pi5_software_encode_beyond_1080p30_is_said_once_a_process(
        camera: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Said when the camera starts, not at every reopen after a stall."""
    monkeypatch.setattr(picamera2_source, "_warned", set())
    caplog.set_level(logging.WARNING)
    cfg = config(fps=240, model="pi5")  # 960x540 at 240 fps: 489,600 macroblocks a second, 1080p30 is 245,760
    for _ in range(2):
        src = make_source(cfg.source)
        src.open()
        src.close()
    said = [r.getMessage() for r in caplog.records if "libx264 in software" in r.getMessage()]
    assert len(said) == 1 and "source.picamera2.model: pi5" in said[0], caplog.text


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
    picked = status.detect.frames_analysed + value(pipeline.metrics, "edge_agent_frames_skipped_total")
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
