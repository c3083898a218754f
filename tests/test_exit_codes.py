"""Failures reach systemd: every command ends with the sysexits code the README's table gives, as a
real process, and an expected fault is one line with its cause and a hint, never a traceback.

Each code is pinned once on a real process (the code reaching the shell, signals); the matrix of every
fault in every command it reaches, and the spool commands' outcomes, run the same entry point in this
process (the `in_process` fixture): what they pin is the code and the message each command gives."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from edge_agent import const
from tests import agent_process
from tests.cli_in_process import Cli
from tests.receiver_fixture import free_port
from tests.spool_helpers import small_filesystem

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_media" / "conveyor_720p30.mp4"
CAMERA = f"{sys.executable} {ROOT / 'tests' / 'stream_sample.py'} {SAMPLE} --loop"


def cli(*argv: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def raw_video(path: Path) -> Path:
    """Raw YUYV frames in NUT, as some USB cameras give them."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("rawvideo", rate=30)
        s.width, s.height, s.pix_fmt = 320, 240, "yuyv422"
        for i in range(30):
            f = av.VideoFrame.from_ndarray(np.full((240, 320), 100, np.uint8), format="gray").reformat(format="yuyv422")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
    return path


# --- one process per code -------------------------------------------------------------------------


def test_usage_error_is_64() -> None:
    res = cli("replay", "--no-such-option", str(SAMPLE))
    assert res.returncode == const.EXIT_USAGE and "unrecognized arguments" in res.stderr


@pytest.mark.slow
def test_run_with_a_missing_file_source_is_66_with_the_cause(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", f"source:\n  kind: file\n  path: {tmp_path / 'gone.mp4'}\n"
                f"spool:\n  dir: {tmp_path / 'spool'}\n")
    res = cli("run", "--config", str(cfg))
    assert res.returncode == const.EXIT_NOINPUT, res.stderr
    assert "No such file or directory" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_replay_of_a_missing_file_is_66_and_of_garbage_is_65(tmp_path: Path) -> None:
    res = cli("replay", str(tmp_path / "gone.mp4"), "--no-upload")
    assert res.returncode == const.EXIT_NOINPUT and "no such file" in res.stderr
    bad = write(tmp_path / "bad.mp4", "not a video")
    res = cli("replay", str(bad), "--no-upload", "-q", "--output-dir", str(tmp_path / "clips"))
    assert res.returncode == const.EXIT_DATAERR and "no video could be read" in res.stderr


@pytest.mark.slow
def test_a_stage_that_dies_ends_run_with_70_not_0(tmp_path: Path) -> None:
    """A stage thread that dies ends the process with 70 within seconds (not 0, not a process running
    headless), so systemd restarts it. The test plants a bug in the decode stage of a
    real `edge-agent run` process (a live, looping source, so nothing else would end it)."""
    cfg = write(tmp_path / "c.yaml", f"source:\n  kind: pipe\n  command: {CAMERA}\n"
                f"spool:\n  dir: {tmp_path / 'spool'}\n")
    planted = (
        "import sys\n"
        "from edge_agent.pipeline import decode\n"
        "def broken(self):\n"
        "    self.inbox.get()\n"
        "    raise RuntimeError('planted bug')\n"
        "decode.DecodeStage.run = broken\n"
        "from edge_agent.cli import main\n"
        f"sys.exit(main(['run', '--config', {str(cfg)!r}]))\n")
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", planted], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == const.EXIT_SOFTWARE, res.stderr
    assert "the decode stage failed: RuntimeError: planted bug (exit 70)" in res.stderr
    assert time.monotonic() - started < 20


@pytest.mark.slow
def test_a_raw_video_camera_file_is_encoded_on_arrival(tmp_path: Path) -> None:
    """Raw YUYV (many USB webcams' default) is encoded to H.264 as it arrives: the run ends 0."""
    cfg = write(tmp_path / "c.yaml", f"source:\n  kind: file\n  path: {raw_video(tmp_path / 'raw.nut')}\n"
                f"spool:\n  dir: {tmp_path / 'spool'}\n")
    res = cli("run", "--config", str(cfg), timeout=60)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_an_unusable_spool_is_73_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    cfg = write(tmp_path / "c.yaml",
                f"source:\n  kind: file\n  path: {SAMPLE}\nspool:\n  dir: {tmp_path / 'file' / 's'}\n")
    res = cli("run", "--config", str(cfg))
    assert res.returncode == const.EXIT_CANTCREAT and "point spool.dir at a writable folder" in res.stderr


@pytest.mark.slow
def test_bad_config_is_78(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "source:\n  kind: fiel\n")
    res = cli("run", "--config", str(cfg))
    assert res.returncode == const.EXIT_CONFIG and "c.yaml:2:9: source.kind" in res.stderr


@pytest.mark.slow
def test_a_requested_stop_is_0_and_a_live_camera_that_is_absent_is_retried(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", f"source:\n  kind: v4l2\n  path: {tmp_path / 'video9'}\n"
                f"spool:\n  dir: {tmp_path / 'spool'}\n")
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = agent_process.popen(["run", "--config", str(cfg)],
                                   stderr=err, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while "source unavailable" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    text = log.read_text()
    assert "source unavailable, retrying" in text and "run `edge-agent check`" in text


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_requested_stop_of_replay_is_0_and_keeps_what_was_made(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (or systemd's SIGTERM) in the middle of a replay: the pipeline stops as the daemon's does,
    the clip in progress is cut short and kept (its metadata says so), the summary and report are
    written, and the exit is 0, not 130 or death by signal."""
    report = tmp_path / "report.json"
    proc = agent_process.popen(["replay", "--realtime", "--no-upload",
                                "--output-dir", str(tmp_path / "clips"), "--report", str(report), str(SAMPLE)],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # the first label read (3.2 s into the video): its clip is still recording
        if "detected cid=" in line:
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait(30) == 0, rest
    assert "stopped at frame" in rest and "Traceback" not in rest
    events = json.loads(report.read_text())["events"]
    assert len(events) == 1 and events[0]["clip"]["truncated"] == "shutdown"
    assert (tmp_path / "clips" / f"{events[0]['event_id']}.mp4").is_file()


SILENT_CAMERA_STOPS = {  # what each command says when stopped while waiting on a camera that never sends
    "check": ("check", "--seconds", "30"),
    "snapshot": ("snapshot", "-o", "{tmp}/s.jpg"),
    "tune": ("tune",),
    "tune --web": ("tune", "--web", "--port", "{port}"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(SILENT_CAMERA_STOPS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_a_wait_on_a_silent_camera_is_0_at_once(tmp_path: Path, command: str, sig: signal.Signals) -> None:
    """A technician gives up on a camera that never sends: the wait ends now (the camera command is
    ended with it), the command says what it got, and a requested stop is 0: not 130, not death by
    signal, not a minute of waiting for FFmpeg to give up."""
    ready = tmp_path / "camera-started"
    cfg = write(tmp_path / "c.yaml", f"source:\n  kind: pipe\n  command: sh -c 'touch {ready}; exec sleep 60'\n"
                f"spool:\n  dir: {tmp_path / 'spool'}\n")
    argv = [a.format(tmp=tmp_path, port=free_port()) for a in SILENT_CAMERA_STOPS[command]]
    proc = agent_process.popen([*argv, "--config", str(cfg)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:  # the camera runs: the command waits on it
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 10, out
    assert "Traceback" not in out and "interrupted" not in out
    if command == "check":  # the other checks still run and the table says the source was stopped
        assert "SKIP  source" in out and "stopped by request" in out and "PASS  spool" in out
    else:
        assert "stopped before a frame came" in out


# --- an expected fault: its exit code and its cause, in every command it reaches ----------------


FAULTS = {
    "no camera": "source:\n  kind: v4l2\n  path: {tmp}/video9\n",
    "missing file": "source:\n  kind: file\n  path: {tmp}/gone.mp4\n",
    "unreachable server": f"source:\n  kind: file\n  path: {SAMPLE}\n"
                          "upload:\n  url: http://127.0.0.1:{port}/cid\n  connect_timeout_s: 1\n"
                          "  backoff_base_s: 30\n",
    "unwritable spool": f"source:\n  kind: file\n  path: {SAMPLE}\n",
    "bad config": "source:\n  kind: fiel\n",
}
NO_CAMERA = "no camera at {tmp}/video9: list cameras with `v4l2-ctl --list-devices`"
MISSING = "{tmp}/gone.mp4 does not exist: fix source.path"
SPOOL_NOT_A_DIR = "cannot use spool.dir {tmp}/file/spool: Not a directory (point spool.dir at a writable folder"
# status and list only read (a spool not made yet is empty) and say which part of the path is a file
SPOOL_UNDER_A_FILE = ("cannot use spool.dir {tmp}/file/spool: Not a directory: {tmp}/file is a file (point "
                      "spool.dir at a writable folder")
BAD_CONFIG = "c.yaml:2:9: source.kind: Input should be 'file', 'v4l2'"
# (fault, command): the exit code and what the output must say (its cause and hint). Each command
# that reaches the faulty part, once; `bad config` for every way a command loads it. An exit code
# alone would not do: cli.py turns any unexpected exception into one line and 70.
EXPECTED: dict[tuple[str, str], tuple[int, str]] = {
    ("no camera", "check --seconds 1"): (const.EXIT_FAILED, "FAIL  source    cannot open v4l2 source {tmp}/video9"),
    ("no camera", "snapshot -o {tmp}/s.jpg"): (const.EXIT_NOINPUT, NO_CAMERA),
    ("no camera", "tune --count 1"): (const.EXIT_NOINPUT, NO_CAMERA),
    ("missing file", "check --seconds 1"): (const.EXIT_FAILED, MISSING),
    ("missing file", "snapshot -o {tmp}/s.jpg"): (const.EXIT_NOINPUT, MISSING),
    ("missing file", "tune --count 1"): (const.EXIT_NOINPUT, MISSING),
    ("unreachable server", "check --seconds 1"): (const.EXIT_FAILED, "nothing listens on 127.0.0.1:{port}: is the"),
    ("unreachable server", "spool status"): (0, "reads waiting   1"),
    ("unreachable server", "spool list"): (0, "CID-"),
    ("unreachable server", "spool flush --timeout 2"): (const.EXIT_QUEUED, "1 clip(s) still queued, last error: "
                                                        "connection refused by 127.0.0.1:{port}"),
    ("unwritable spool", "check --seconds 1"): (const.EXIT_FAILED, "{tmp}/file/spool cannot be created or written"),
    ("unwritable spool", "spool flush --timeout 2"): (const.EXIT_CANTCREAT, SPOOL_NOT_A_DIR),
    ("unwritable spool", "spool requeue"): (const.EXIT_CANTCREAT, SPOOL_NOT_A_DIR),
    ("unwritable spool", "spool status"): (const.EXIT_CANTCREAT, SPOOL_UNDER_A_FILE),
    ("unwritable spool", "spool list"): (const.EXIT_CANTCREAT, SPOOL_UNDER_A_FILE),
    ("bad config", "check --seconds 1"): (const.EXIT_CONFIG, BAD_CONFIG),
    ("bad config", "snapshot -o {tmp}/s.jpg"): (const.EXIT_CONFIG, BAD_CONFIG),
    ("bad config", "tune --count 1"): (const.EXIT_CONFIG, BAD_CONFIG),
    ("bad config", "spool status"): (const.EXIT_CONFIG, BAD_CONFIG),
    ("bad config", "config show"): (const.EXIT_CONFIG, BAD_CONFIG),
}


@pytest.mark.parametrize(("fault", "command"), list(EXPECTED), ids=[f"{f}: {c.split(' -')[0]}" for f, c in EXPECTED])
@pytest.mark.slow
def test_an_expected_fault_exits_with_its_code_and_says_its_cause(tmp_path: Path, fault: str, command: str,
                                                                 in_process: Cli) -> None:
    (tmp_path / "file").write_text("not a folder")
    spool = tmp_path / "file" / "spool" if fault == "unwritable spool" else tmp_path / "spool"
    if fault == "unreachable server":  # one clip waiting, so delivery is tried
        _spool_with_clips(tmp_path, 1)
    port = free_port()
    text = FAULTS[fault].format(tmp=tmp_path, port=port) + f"spool:\n  dir: {spool}\n  min_free_bytes: 0\n"
    cfg = write(tmp_path / "c.yaml", text if fault != "bad config" else FAULTS[fault])
    code, says = EXPECTED[(fault, command)]
    res = in_process(*command.format(tmp=tmp_path).split(), "--config", str(cfg))
    out = res.stdout + res.stderr
    assert res.returncode == code, (res.returncode, out[-2000:])
    assert says.format(tmp=tmp_path, port=port) in out, out[-2000:]
    assert "Traceback" not in out and "internal error" not in out, out[-2000:]


def test_an_internal_error_is_one_line_and_70_and_debug_shows_the_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Expected faults are handled where they happen; anything else is a bug: one line saying so (exit
    70), and --debug shows where it came from."""
    from edge_agent import cli as cli_module
    from edge_agent.commands import spool as spool_command

    def broken(_args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(spool_command, "cmd_status", broken)
    assert cli_module.main(["spool", "status"]) == const.EXIT_SOFTWARE
    err = capsys.readouterr().err
    assert err.strip() == ("edge-agent spool: internal error: RuntimeError: a bug (run again with --debug for the "
                           "traceback, and report it)")
    with pytest.raises(RuntimeError, match="a bug"):
        cli_module.main(["--debug", "spool", "status"])


# --- a finite job that did not do all of its work is not 0 -----------------------------------------


@pytest.mark.slow
def test_a_replay_that_made_no_clip_for_a_detected_cid_is_1_and_validate_warns(tmp_path: Path) -> None:
    """clip.width asks for re-encoding with only h264_nvenc, which this build cannot open: the CIDs go
    out without video, and the run says so and fails; `config validate` and `check` warn beforehand."""
    cfg = write(tmp_path / "nvenc.yaml", "clip:\n  width: 640\n  encoders: [h264_nvenc]\n")
    check = cli("config", "validate", str(cfg))
    assert check.returncode == 0 and "warning: clip.encoders: none of h264_nvenc exists in this build" in check.stderr
    res = cli("replay", "-q", "--no-upload", "--output-dir", str(tmp_path / "clips"), "--config", str(cfg),
              str(SAMPLE), timeout=120)
    assert res.returncode == const.EXIT_FAILED, res.stderr[-2000:]
    assert "3 of 3 CID(s) went out without video: no H.264 encoder" in res.stderr
    assert "Traceback" not in res.stderr
    ok = write(tmp_path / "ok.yaml", "clip:\n  width: 640\n  encoders: [h264_nvenc, libx264]\n")
    assert "warning" not in cli("config", "validate", str(ok)).stderr


def _spool_with_clips(tmp_path: Path, n: int) -> Path:
    from edge_agent.delivery.spool import Spool
    from tests.spool_helpers import add_clip, spool_config

    spool = Spool(spool_config(tmp_path / "spool"))
    for _ in range(n):
        add_clip(spool)
    spool.close()
    return tmp_path / "spool"


def _spool_config(tmp_path: Path, url: str) -> Path:
    return write(tmp_path / "config.yaml", f"upload:\n  url: {url}\n  backoff_base_s: 0.05\n  backoff_cap_s: 0.2\n"
                 f"spool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\n")


@pytest.mark.slow
def test_a_flush_that_leaves_clips_refused_is_1_and_one_that_delivers_all_is_0(tmp_path: Path,
                                                                              in_process: Cli) -> None:
    from tests.flaky_server import FlakyServer

    _spool_with_clips(tmp_path, 3)
    with FlakyServer([(422, {}, b'{"detail": "device unknown"}')] + ["ok"] * 10) as server:
        cfg = _spool_config(tmp_path, server.url)
        res = in_process("spool", "flush", "--timeout", "20", "--config", str(cfg))
        assert res.returncode == const.EXIT_FAILED, (res.stdout, res.stderr)
        assert "delivered 2 clip(s); 1 refused by the server and quarantined" in res.stdout
        assert "1 clip(s) in quarantine, not delivered" in res.stderr and "spool requeue" in res.stderr
        requeued = in_process("spool", "requeue", "--config", str(cfg))
        assert requeued.returncode == 0 and "requeued 1 clip(s)" in requeued.stdout, requeued.stderr
        again = in_process("spool", "flush", "--timeout", "20", "--config", str(cfg))
    assert again.returncode == 0 and "the spool is empty" in again.stdout, (again.stdout, again.stderr)


@pytest.mark.slow
def test_a_requeue_that_leaves_clips_in_quarantine_is_1(tmp_path: Path, in_process: Cli) -> None:
    """A video without its event (no CID, no metadata) is set aside at the spool's start and can never
    be requeued: `requeue` says so and fails."""
    spool_dir = _spool_with_clips(tmp_path, 1)
    (spool_dir / "clips" / "stray.mp4").write_bytes(b"not a clip of any event")
    cfg = _spool_config(tmp_path, "http://127.0.0.1:9/cid")
    res = in_process("spool", "requeue", "--config", str(cfg))
    assert res.returncode == const.EXIT_FAILED, (res.stdout, res.stderr)
    assert "could not be requeued" in res.stdout and "still in quarantine" in res.stderr


# --- odd inputs: one line with the cause and its sysexits code, never a traceback ------------------


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only file system (a tmpfs mounted ro; root, as CI is), skipped where none can be
    mounted: the test's root would write through mode bits anyway."""
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as where:
        yield where


def _one_line(res: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    """The run ended with `code` and its last stderr line says `says`; nothing looks like a traceback."""
    out = res.stdout + res.stderr
    assert res.returncode == code, (res.returncode, out[-2000:])
    assert says in res.stderr.strip().splitlines()[-1], out[-2000:]
    assert "Traceback" not in out and "internal error" not in out and "uvicorn" not in out.lower(), out[-2000:]


def test_a_receiver_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    res = cli("receiver", "--port", "70000", "--data-dir", str(tmp_path / "data"))
    _one_line(res, const.EXIT_USAGE, "argument --port: 70000 is not a port number (0-65535)")


@pytest.mark.slow
def test_a_receiver_port_in_use_is_one_line_and_75(tmp_path: Path, in_process: Cli) -> None:
    """Another program (another receiver) has the port: a temporary failure, as a data dir another receiver
    holds is (75), said in one line instead of uvicorn's lines and its exit 3."""
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        res = in_process("receiver", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    _one_line(res, const.EXIT_QUEUED, f"edge-agent receiver: cannot listen on 127.0.0.1:{port}: address already in "
                                      "use (another receiver?): stop the program that has it, or choose another --port")


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "read-only"])
def test_a_receiver_data_dir_it_cannot_use_is_one_line_and_73(tmp_path: Path, where: str, in_process: Cli,
                                                              request: pytest.FixtureRequest) -> None:
    (tmp_path / "file").write_text("not a folder")
    data, why = {"a-file": (tmp_path / "file", f"{tmp_path / 'file'} is a file, not a folder"),
                 "under-a-file": (tmp_path / "file" / "data", f"{tmp_path / 'file'} is a file"),
                 "read-only": (None, "Read-only file system")}[where]
    if data is None:
        data = request.getfixturevalue("read_only_dir") / "data"
    res = in_process("receiver", "--port", str(free_port()), "--data-dir", str(data))
    _one_line(res, const.EXIT_CANTCREAT, f"edge-agent receiver: cannot use --data-dir {data}: {why} (give --data-dir "
                                         "a folder this user can write, on a writable disk)")


def test_config_reference_into_a_read_only_folder_is_one_line_and_73(read_only_dir: Path, in_process: Cli) -> None:
    res = in_process("config", "reference", "--out", str(read_only_dir))
    _one_line(res, const.EXIT_CANTCREAT, f"edge-agent config reference: cannot write into --out {read_only_dir}: "
                                         "Read-only file system")


@pytest.mark.parametrize(("video", "says"), [
    ("/dev/zero", "not a regular video file (a character device): give a video file (a camera is source.kind v4l2 "
                  "or pipe)"),
    ("/dev/null", "not a regular video file (a character device)"),
    ("{tmp}", "a folder, not a regular video file: give the video files in it (e.g. FOLDER/*.mp4)"),
    ("{tmp}/gone.mp4", "no such file"),
], ids=["dev-zero", "dev-null", "a-folder", "missing"])
def test_replay_of_what_is_not_a_regular_video_file_says_what_it_is_and_is_66(tmp_path: Path, video: str, says: str,
                                                                              in_process: Cli) -> None:
    """Nothing is read from it: /dev/zero never ends, and replay counts a file's frames before playing it."""
    video = video.format(tmp=tmp_path)
    res = in_process("replay", "-q", "--no-upload", "--output-dir", str(tmp_path / "clips"), video)
    _one_line(res, const.EXIT_NOINPUT, f"edge-agent replay: {video}: {says}")
