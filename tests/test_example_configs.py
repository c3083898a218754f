"""The example configs in configs/ are what technicians copy to /etc/edge-agent/config.yaml: each
must validate as the daemon loads it (strict source checks, no environment), point editors at the
schema, and say what its device needs. The pipe examples' shape (raw H.264 on stdout, read with
input_format h264) is exercised with a real subprocess camera."""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.capture.source import AvSource
from edge_agent.config import Config, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema=../docs/config.schema.json"


def load(name: str) -> Config:
    return load_config(ROOT / "configs" / name, strict_source=True, env={})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_validates_as_the_daemon_loads_it(path: Path) -> None:
    cfg = load_config(path, strict_source=True, env={})
    assert path.read_text().splitlines()[0] == SCHEMA_LINE
    assert (ROOT / "docs" / "config.schema.json").is_file()  # what the first line points at
    assert cfg.source.kind in ("file", "v4l2", "url", "pipe", "picamera2")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_explains_itself_in_comments(path: Path) -> None:
    comments = [ln for ln in path.read_text().splitlines()[1:] if ln.lstrip().startswith("#") or " # " in ln]
    assert len(comments) >= 3, "a technician needs to know why each setting is there"


def test_every_kind_of_device_has_its_example() -> None:
    assert {p.name for p in CONFIGS} >= {"replay.yaml", "usb-webcam.yaml", "rtsp-camera.yaml", "pi-csi.yaml",
                                          "pi-csi-picamera2.yaml", "jetson-csi.yaml"}
    assert {load_config(p, env={}).source.kind for p in CONFIGS} == {"file", "v4l2", "url", "pipe", "picamera2"}


def test_replay_reads_a_sample_file_as_fast_as_it_can() -> None:
    cfg = load("replay.yaml")
    assert cfg.source.kind == "file" and cfg.source.realtime is False
    src = AvSource(cfg.source, str(ROOT / cfg.source.path))  # the path is relative to the checkout
    try:
        info = src.open()
        first = next(src.packets())
    finally:
        src.close()
    assert info.codec == "h264" and first.keyframe


def test_usb_webcam_asks_for_mjpeg_720p30() -> None:
    s = load("usb-webcam.yaml").source
    assert (s.kind, s.path) == ("v4l2", "/dev/video0")
    assert s.options == {"input_format": "mjpeg", "video_size": "1280x720", "framerate": "30"}


def test_rtsp_camera_example_uses_an_rtsp_url_and_explains_tcp_and_keyframes() -> None:
    cfg = load("rtsp-camera.yaml")
    assert cfg.source.kind == "url" and cfg.source.path.startswith("rtsp://")
    text = (ROOT / "configs" / "rtsp-camera.yaml").read_text()
    assert "TCP" in text and "1 s" in text


def test_pi_csi_picamera2_keeps_1080p_a_keyframe_a_second_and_detects_on_lores() -> None:
    s = load("pi-csi-picamera2.yaml").source
    p = s.picamera2
    assert s.kind == "picamera2" and (p.width, p.height) == (1920, 1080) and p.keyframe_every == s.fps == 30
    assert p.lores_width < p.width and p.lores_height < p.height
    assert "pi-csi.yaml" in (ROOT / "configs" / "pi-csi-picamera2.yaml").read_text()  # the fallback is named


def test_pi_csi_streams_h264_with_inline_headers_and_a_keyframe_every_second() -> None:
    s = load("pi-csi.yaml").source
    argv = shlex.split(s.command or "")
    assert argv[0] == "rpicam-vid" and s.input_format == "h264"
    for flag in ("--inline", "--flush", "-n"):
        assert flag in argv
    assert argv[argv.index("--intra") + 1] == "30" and argv[argv.index("--framerate") + 1] == "30"
    assert argv[argv.index("-t") + 1] == "0" and argv[-2:] == ["-o", "-"]
    assert "mjpeg" in (ROOT / "configs" / "pi-csi.yaml").read_text().lower()  # the MJPEG alternative


def test_jetson_csi_pipeline_repeats_headers_and_writes_a_byte_stream_to_stdout() -> None:
    s = load("jetson-csi.yaml").source
    argv = shlex.split(s.command or "")
    assert argv[:3] == ["gst-launch-1.0", "-q", "nvarguscamerasrc"] and s.input_format == "h264"
    assert "video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1" in argv  # quotes removed by shlex
    for prop in ("insert-sps-pps=true", "iframeinterval=30", "idrinterval=30",
                 "video/x-h264,stream-format=byte-stream"):
        assert prop in argv
    assert argv[-2:] == ["fdsink", "fd=1"]


CAMERA = textwrap.dedent("""
    # a stand-in for rpicam-vid / gst-launch: raw Annex-B H.264 on stdout, a keyframe every 30 frames
    import sys, av, numpy as np
    out = av.open(sys.stdout.buffer, "w", format="h264")
    s = out.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
    s.codec_context.gop_size = 30
    s.codec_context.options = {"preset": "ultrafast", "bf": "0", "sc_threshold": "0"}
    for i in range(90):
        f = av.VideoFrame.from_ndarray(np.full((240, 320), i % 200, np.uint8), format="gray").reformat(format="yuv420p")
        f.pts = i
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()
""")


@pytest.mark.parametrize("name", ["pi-csi.yaml", "jetson-csi.yaml"])
def test_the_pipe_examples_shape_reads_a_raw_h264_camera(name: str, tmp_path: Path) -> None:
    """The example with its command swapped for a real subprocess writing raw H.264 like the camera would."""
    script = tmp_path / "camera.py"
    script.write_text(CAMERA)
    text = (ROOT / "configs" / name).read_text()
    cfg = parse_config(text, name, env={})
    cfg.source.command = f"{sys.executable} {script}"
    src = AvSource(cfg.source)
    try:
        info = src.open()
        packets = [p for _, p in zip(range(60), src.packets(), strict=False)]
    finally:
        src.close()
    assert (info.codec, info.width, info.height) == ("h264", 320, 240)
    assert len(packets) == 60 and packets[0].keyframe and sum(p.keyframe for p in packets) == 2
    assert all(b.t >= a.t for a, b in zip(packets, packets[1:], strict=False))  # one capture clock
