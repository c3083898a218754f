"""Capture sessions: one opener per source kind; a session's capture clock starts where it is told and
the session says where it ended, so the capture stage chains sessions (files played back to back, a
camera reopened) without anyone writing a shared offset."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import get_args

import pytest

from edge_agent.capture.consumer import Route
from edge_agent.capture.media import Packet
from edge_agent.capture.session import SourceError
from edge_agent.capture.source import OPENERS, AvSource, open_url
from edge_agent.capture.supervisor import CaptureSupervisor
from edge_agent.config import SourceConfig, parse_config
from edge_agent.metrics import Metrics
from edge_agent.stage import FailureBox
from tests.media_factory import make_video

FPS = 30


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("media") / "v.mp4", seconds=2, fps=FPS, size=(320, 180), gop=15)


def test_every_kind_ffmpeg_reads_has_its_own_opener() -> None:
    kinds = set(get_args(SourceConfig.model_fields["kind"].annotation))
    assert set(OPENERS) == kinds - {"picamera2"}  # picamera2 is a session class of its own


def test_an_rtsp_camera_is_read_over_tcp_unless_configured_otherwise() -> None:
    cfg = SourceConfig(kind="url", path="rtsp://cam/stream")
    assert open_url(cfg, "rtsp://cam/stream").options == {"rtsp_transport": "tcp"}
    udp = SourceConfig(kind="url", path="rtsp://cam/stream", options={"rtsp_transport": "udp"})
    assert open_url(udp, "rtsp://cam/stream").options == {"rtsp_transport": "udp"}


def test_a_pipe_without_a_command_is_one_line_saying_so() -> None:
    with pytest.raises(SourceError, match="source.command is empty"):
        AvSource(SourceConfig(kind="pipe", command=" ")).open()


def test_a_session_starts_at_the_time_it_is_given_and_says_where_it_ended(video: Path) -> None:
    src = AvSource(SourceConfig(kind="file", path=str(video)))
    src.open(start_t=100.0)
    got: list[Packet] = []
    try:
        ended = src.read(lambda p: got.append(p) or True)  # type: ignore[func-returns-value]
    finally:
        src.close()
    assert len(got) == 2 * FPS and ended.delivered == len(got) and ended.error is None
    assert got[0].t == pytest.approx(100.0)
    assert ended.end_t == pytest.approx(max(p.t for p in got) + 1 / FPS)


def test_a_session_stopped_early_still_says_where_it_ended(video: Path) -> None:
    src = AvSource(SourceConfig(kind="file", path=str(video)))
    src.open()
    got: list[Packet] = []
    try:
        ended = src.read(lambda p: got.append(p) or len(got) < 10)  # type: ignore[func-returns-value]
    finally:
        src.close()
    assert len(got) == 10 and ended.end_t == pytest.approx(max(p.t for p in got) + 1 / FPS)


class Collect:
    """A packet consumer (capture's contract) keeping what it is offered."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []
        self.ended = threading.Event()

    def offer(self, pkt: Packet) -> None:
        self.packets.append(pkt)

    def end(self) -> None:
        self.ended.set()

    def status(self) -> int:
        return len(self.packets)


def test_files_played_back_to_back_each_start_past_the_cooldown_after_the_last(video: Path) -> None:
    """A CID in two recordings makes two events: the second starts a cooldown (and a second) after the
    first ended, on one capture clock."""
    cfg = parse_config(f"source:\n  kind: file\n  path: {video}\ndetector:\n  cooldown_s: 3\n", env={})
    into = Collect()
    sessions: list[int] = []

    def on_session(src: AvSource, n: int) -> Route:
        sessions.append(n)
        return Route(packets=(into,))

    capture = CaptureSupervisor(cfg, Metrics(), FailureBox(), on_session, videos=[str(video), str(video)])
    capture.run()
    first, second = into.packets[: 2 * FPS], into.packets[2 * FPS:]
    assert sessions == [1, 2] and len(second) == 2 * FPS
    assert second[0].t == pytest.approx(max(p.t for p in first) + 1 / FPS + 3 + 1)
    assert capture.status().frames == 4 * FPS


def test_a_source_reload_ends_a_camera_retry_wait_and_starts_the_back_off_again(
        video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A technician fixing source.path in the YAML of a camera that is away sees it tried at once, not after
    the back-off the old path had reached, and the new path's retries start from the first back-off."""
    monkeypatch.setattr("edge_agent.const.REOPEN_BACKOFF_START_S", 30.0)  # longer than this test may take
    caplog.set_level("DEBUG", logger="edge_agent")
    missing = parse_config(f"source:\n  kind: v4l2\n  path: {tmp_path / 'video9'}\n", env={})
    into = Collect()
    capture = CaptureSupervisor(missing, Metrics(), FailureBox(), lambda src, n: Route(packets=(into,)))
    worker = threading.Thread(target=capture.run, daemon=True)
    worker.start()

    def waiting(attempts: int) -> None:
        deadline = threading.Event()
        for _ in range(200):  # the capture thread's own status says where it is: no sleeping on a guess
            st = capture.status()
            if st.doing == "waiting" and st.reopen_attempts >= attempts:
                return
            deadline.wait(0.05)
        raise AssertionError(f"capture never waited to retry: {capture.status()}")

    waiting(1)
    other = parse_config(f"source:\n  kind: v4l2\n  path: {tmp_path / 'video8'}\n", env={})
    capture.apply(other, frozenset({"source"}))
    waiting(2)
    retries = [r.getMessage() for r in caplog.records if "video8" in r.getMessage() and "retrying in" in r.getMessage()]
    assert retries and "retrying in 30 s" in retries[0], retries  # not the doubled 60 s of the old path
    capture.apply(parse_config(f"source:\n  kind: file\n  path: {video}\n", env={}), frozenset({"source"}))
    worker.join(timeout=20)  # the file is read at once; without the wake-up it would wait 30 s first
    assert not worker.is_alive() and len(into.packets) == 2 * FPS
    capture.stop()
