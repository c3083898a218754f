"""A stop (SIGTERM) or a source restart (the camera's pipe ends and is reopened) hands every open
recording to the clip stage at once. With labels at 4 a second and an 8 s post-roll ~32 are open:
each one still becomes a clip with video, none is let go as "clip worker behind". `edge-agent run`
as systemd runs it, fed by a real camera process through a pipe. A camera frozen in the middle of a read
(a network camera whose read only FFmpeg's timeout ends, a camera command that ignores SIGTERM) does not
hold the stop: its open recordings are queued all the same."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests import agent_process
from tests.frozen_http_camera import FrozenHttpCamera
from tests.label_video import make_label_video
from tests.media_factory import transcode
from tests.receiver_fixture import free_port
from tests.test_daemon import ROOT, metrics, start_daemon, stop, wait_until

pytestmark = pytest.mark.slow

# labels in view 0.6 s, 4 a second: every frame decoded (detector.max_blind_s: 0) so that every one is read
POST_ROLL = "detector:\n  max_blind_s: 0\nclip:\n  post_roll_s: 8\n"
NOWHERE = "http://127.0.0.1:9/cid"  # the server is away: every clip stays in the spool


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of labels at 4 a second, ~3 in view at once (each test stops or ends the camera by ~12 s)."""
    return make_label_video(tmp_path_factory.mktemp("storm") / "storm.mp4", seconds=20, per_s=4)


def camera(video: Path, *args: str) -> str:
    return f"{sys.executable} {ROOT / 'tests' / 'stream_sample.py'} {video} {' '.join(args)}"


def outcomes(log: str) -> tuple[set[str], set[str], list[str]]:
    """(CIDs detected, CIDs whose clip has video, the lines of clips sent without video)."""
    detected = set(re.findall(r"detected cid=(\S+)", log))
    ready = set(re.findall(r"clip ready cid=(\S+)", log))
    failed = [line for line in log.splitlines() if "clip failed" in line]
    return detected, ready, failed


def _m(port: int, name: str) -> float:
    try:
        return metrics(port).get(name, 0.0)
    except Exception:  # not listening yet
        return 0.0


@pytest.mark.slow
def test_sigterm_makes_a_clip_with_video_of_every_open_recording(storm: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = start_daemon(tmp_path, camera(storm), NOWHERE, port, extra=POST_ROLL)
    try:
        # 10 s of labels: with the 8 s post-roll ~32 recordings are open at the stop, as many as ever
        wait_until(lambda: _m(port, "edge_agent_events_total") >= 40, 60, "40 labels read")
    finally:
        started = time.monotonic()
        rc = stop(proc, timeout=20)
    took = time.monotonic() - started
    detected, ready, failed = outcomes((tmp_path / "daemon.log").read_text())
    print(f"SIGTERM: {len(detected)} CIDs, {len(detected - ready)} without video, stop took {took:.1f} s")
    assert rc == 0 and took < 15
    assert len(detected) >= 40
    assert failed == [], f"{len(failed)} of {len(detected)} clips without video:\n" + "\n".join(failed[:3])
    assert ready == detected


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["", "  width: 480\n"], ids=["remux", "re-encode"])
def test_a_camera_pipe_that_ends_and_is_reopened_keeps_every_open_recordings_video(storm: Path, tmp_path: Path,
                                                                                   clip: str) -> None:
    """Re-encoding (clip.width) a clip a second takes about as long as the labels come: when the worker
    falls behind, the camera's H.264 is copied instead (`not_reencoded: behind`), so none goes without."""
    port = free_port()
    # 11 s of video (10 s of labels: ~32 recordings open at its end), then the camera process ends: its
    # pipe's EOF restarts the source
    proc = start_daemon(tmp_path, camera(storm, "--seconds", "11"), NOWHERE, port, extra=POST_ROLL + clip)
    try:
        wait_until(lambda: _m(port, "edge_agent_source_restarts_total") >= 1, 60, "the pipe's end and a reopen")
        events = _m(port, "edge_agent_events_total")  # all opened before the end: the new run's first label is 1 s in
        handled = ("edge_agent_clips_total", "edge_agent_clip_errors_total")
        wait_until(lambda: sum(_m(port, n) for n in handled) >= events, 30, "a clip for each recording open at the end")
        m = metrics(port)
    finally:
        assert stop(proc, timeout=20) == 0
    print(f"pipe EOF: {events:.0f} events, {m['edge_agent_clip_errors_total']:.0f} without video, "
          f"{m['edge_agent_clips_dropped_total']:.0f} let go")
    assert events >= 36  # more than a post-roll's worth: the end came with every slot of it open
    assert m["edge_agent_clips_dropped_total"] == 0
    assert m["edge_agent_clip_errors_total"] == 0


def stop_replay(video: Path, tmp_path: Path, extra: str) -> tuple[int, float, str, list[dict]]:
    """`replay --realtime` of `video` stopped with SIGTERM once 40 labels are read: (exit code, seconds the
    stop took, the log, each clip's metadata)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(POST_ROLL + extra, encoding="utf-8")
    err = tmp_path / "replay.log"
    out = tmp_path / "clips"
    with err.open("wb") as log:
        proc = agent_process.popen(["replay", "-q", "--realtime", "--no-upload",
                                    "--output-dir", str(out), "--config", str(cfg), str(video)], stderr=log)
    try:
        wait_until(lambda: err.read_text().count("detected cid=") >= 40, 60, "40 labels read")
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return rc, time.monotonic() - started, err.read_text(), [json.loads(p.read_text()) for p in out.glob("*.json")]


def test_a_stop_copies_the_cameras_h264_where_re_encoding_would_not_fit_its_budget(storm: Path,
                                                                                   tmp_path: Path) -> None:
    """Re-encoding every clip (clip.width) with ~32 open at the stop is more work than `replay`'s 10 s stop
    budget holds; the camera's H.264 copied into the clip takes milliseconds: every read keeps its video, at
    the camera's size, saying why (`clip.not_reencoded: stopping`)."""
    rc, took, text, metas = stop_replay(storm, tmp_path, "  width: 480\n")
    detected, ready, failed = outcomes(text)
    copied = [m for m in metas if m["clip"].get("not_reencoded") == "stopping"]
    print(f"stop with re-encoding: {len(detected)} CIDs, {len(ready)} with video ({len(copied)} copied at the "
          f"stop), {len(failed)} without, stop took {took:.1f} s")
    assert rc == 0 and took < 15
    assert {m["cid"] for m in metas} == detected and ready == detected and failed == []
    assert len(copied) >= 20  # the open recordings, as many as ever
    assert all(m["clip"]["width"] == 640 for m in copied)  # the camera's own size
    assert all(m["clip"]["width"] == 480 for m in metas if "not_reencoded" not in m["clip"])


def test_beyond_the_stop_budget_the_rest_go_out_without_video_and_none_is_lost(storm: Path, tmp_path: Path) -> None:
    """An MJPEG camera has no H.264 to copy: re-encoding every clip with ~32 open at the stop is more work
    than `replay`'s 10 s stop budget holds. Clips are made until the budget's reserve, the rest are sent at
    once without video, each with clip.error saying why and a log line; every CID detected is in the
    output, and the stop (requested) ends with 0 in time."""
    mjpeg = transcode(storm, tmp_path / "storm.mkv", "mjpeg")
    rc, took, text, metas = stop_replay(mjpeg, tmp_path, "  width: 480\n")
    detected, ready, failed = outcomes(text)
    budget = [m for m in metas if "stop budget ran out" in (m["clip"].get("error") or "")]
    print(f"stop beyond its budget: {len(detected)} CIDs, {len(ready)} with video, {len(budget)} without "
          f"(budget), stop took {took:.1f} s")
    assert rc == 0 and took < 15  # replay's stop budget is 10 s; an encode in progress is given up at it
    assert {m["cid"] for m in metas} == detected  # every CID went out
    assert budget and ready  # some made in the budget, the rest sent without video
    assert len(ready) + len(budget) == len(detected)
    assert len([line for line in failed if "stop budget ran out" in line]) == len(budget)


@pytest.fixture(scope="module")
def three_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labels at 1, 2, 3 s (and more after 4 s, which a camera frozen at 4 s never shows)."""
    return make_label_video(tmp_path_factory.mktemp("three") / "three.mp4", seconds=8, per_s=1)


def queued_cids(tmp_path: Path) -> set[str]:
    res = agent_process.run(["spool", "list", "--json", "--config", str(tmp_path / "config.yaml")],
                            capture_output=True, text=True, check=True)
    return {c["cid"] for c in json.loads(res.stdout)}


def unchanged(value: Callable[[], float], for_s: float = 1.0) -> Callable[[], bool]:
    """A condition: `value()` has not changed for `for_s` seconds (a camera that stopped giving frames)."""
    seen = [value(), time.monotonic()]

    def check() -> bool:
        now = value()
        if now != seen[0]:
            seen[:] = [now, time.monotonic()]
        return time.monotonic() - seen[1] >= for_s

    return check


def stop_when_frozen(proc: agent_process.AgentProcess, log: Path,
                     frozen: Callable[[], bool]) -> tuple[int, float, list[psutil.Process]]:
    """Three labels read, the camera frozen (nothing more comes): SIGTERM. (exit code, seconds the stop took,
    the agent's child processes at the stop)"""
    wait_until(lambda: log.read_text().count("detected cid=") >= 3, 60, "three labels read")
    wait_until(frozen, 30, "the camera to freeze")
    children = psutil.Process(proc.pid).children()
    started = time.monotonic()
    rc = stop(proc, timeout=25)
    return rc, time.monotonic() - started, children


def every_open_recording_queued(tmp_path: Path, rc: int, took: float, what: str) -> str:
    """The stop ended in time with exit 0, and the three CIDs read went to the spool with video. The log."""
    text = (tmp_path / "daemon.log").read_text()
    detected, ready, failed = outcomes(text)
    print(f"{what}, SIGTERM: {len(detected)} CIDs, {len(ready)} with video, stop took {took:.1f} s")
    assert rc == 0 and took < 15
    assert len(detected) == 3 and ready == detected and failed == []
    assert queued_cids(tmp_path) == detected
    return text


@pytest.mark.slow
def test_sigterm_with_a_frozen_network_camera_queues_every_open_recording(three_labels: Path, tmp_path: Path) -> None:
    """An HTTP camera frozen after its third label, open_timeout_s and stall_s 60: FFmpeg's read blocks until
    its timeout and PyAV has no way to end it sooner. The stop does not wait for it: the three recordings
    still open (post-roll 5 s) are cut short and queued with video, in time, and the stop says what it left."""
    with FrozenHttpCamera(three_labels, stall_after=4.0) as cam:
        source = f"  kind: url\n  path: {cam.url}\n  open_timeout_s: 60\n  stall_s: 60\n"
        proc = start_daemon(tmp_path, "", NOWHERE, free_port(), extra="clip:\n  post_roll_s: 5\n", source=source)
        rc, took, _ = stop_when_frozen(proc, tmp_path / "daemon.log", lambda: (cam.frozen_for() or 0) > 1.0)
    text = every_open_recording_queued(tmp_path, rc, took, "frozen url camera")
    assert "capture still reading" in text and "stop incomplete" not in text


@pytest.mark.slow
def test_sigterm_ends_a_pipe_read_at_once_when_the_camera_command_ignores_it(three_labels: Path,
                                                                            tmp_path: Path) -> None:
    """A camera command that ignores SIGTERM and keeps its pipe open, frozen after three labels: the read
    waiting on its pipe ends at once on the stop, the open recordings are queued, and the command is killed
    rather than left behind holding the camera."""
    ignore_term = f"sh -c 'trap \"\" TERM; exec {camera(three_labels, '--stall-after', '4')}'"
    port = free_port()
    proc = start_daemon(tmp_path, "", NOWHERE, port, extra="clip:\n  post_roll_s: 5\n",
                        source=f"  kind: pipe\n  command: {ignore_term}\n  stall_s: 30\n")
    rc, took, commands = stop_when_frozen(proc, tmp_path / "daemon.log",
                                          unchanged(lambda: _m(port, "edge_agent_frames_total")))
    left = {c for c in commands if c.is_running() and c.status() != psutil.STATUS_ZOMBIE}
    for c in left:  # never leave it behind, whatever the outcome
        c.kill()
    text = every_open_recording_queued(tmp_path, rc, took, "pipe camera ignoring SIGTERM")
    assert "capture still reading" not in text  # the read ended at once (closing waits for the command)
    assert commands and not left, left  # killed by the agent, not left holding the camera
