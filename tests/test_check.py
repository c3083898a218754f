"""`edge-agent check` passes on a working set-up, measures what it reads, and fails with a hint a
technician can act on otherwise. Real parts: a real H.264 file with a real QR code, real
subprocess cameras, real HTTP servers on 127.0.0.1, a real spool folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import pytest

from edge_agent.cli import main
from tests.media_factory import make_video
from tests.receiver_fixture import ReceiverProcess

ROOT = Path(__file__).resolve().parent.parent
CID = "CHECK-42"


def make_qr_video(path: Path, payload: str = CID, seconds: float = 2.0, fps: int = 30,
                  size: tuple[int, int] = (320, 240)) -> Path:
    """A tiny H.264 MP4, a keyframe every second, with a QR code in view the whole time."""
    return make_video(path, seconds=seconds, fps=fps, size=size, codes=[(payload, 0.0, seconds)], scale=4)


@pytest.fixture(scope="module")
def qr_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qr_video(tmp_path_factory.mktemp("media") / "qr.mp4")


@pytest.fixture(scope="module")
def qr_video_4s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A camera's 4 s, a keyframe every second: read only, shared by the raw H.264 pipe tests."""
    return make_video(tmp_path_factory.mktemp("media") / "cam.mp4", seconds=4, fps=30, size=(320, 240), gop=30,
                      codes=[(CID, 0.0, 4.0)], scale=4)


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_a: object) -> None:
        pass


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, source: str, *, url: str | None = None, spool: Path | str | None = None,
                 extra: str = "") -> Path:
    cfg = tmp_path / "config.yaml"
    text = f"source:\n{source}spool:\n  dir: {spool or tmp_path / 'spool'}\n  min_free_bytes: 0\n"
    if url:
        text += f"upload:\n  url: {url}\n"
    cfg.write_text(text + extra)
    return cfg


def check(cfg: Path, *args: str, json_out: bool = True, timeout: float = 60) -> tuple[int, dict, str]:
    """`edge-agent check` as typed, run in this process (a process of its own adds nothing to what check
    reports), without the shell's EDGE_AGENT_* settings; it must be done within `timeout` seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT", "CREDENTIALS_DIRECTORY"))}
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with mock.patch.dict(os.environ, env, clear=True), contextlib.chdir(ROOT), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["check", "--config", str(cfg), *args, *(["--json"] if json_out else [])])
    assert time.monotonic() - started < timeout, f"check took over {timeout} s"
    if not json_out:
        return rc, {}, out.getvalue()
    doc = json.loads(out.getvalue())
    return rc, {r["name"]: r for r in doc["results"]}, out.getvalue()


@pytest.mark.slow
def test_check_passes_on_a_video_file_finds_its_qr_code_and_reaches_the_server(
        qr_video: Path, tmp_path: Path) -> None:
    with ReceiverProcess(tmp_path / "receiver") as receiver:
        rc, r, out = check(write_config(tmp_path, f"  kind: file\n  path: {qr_video}\n", url=receiver.cid_url),
                           "--frames", "45")
        stored = receiver.events()
    assert rc == 0, out
    assert json.loads(out)["ok"] is True
    src = r["source"]
    assert src["status"] == "PASS" and "h264 320x240" in src["detail"]
    assert src["data"]["fps"] == pytest.approx(30, abs=0.5) and src["data"]["keyframe_interval_s"] == 1.0
    det = r["detector"]
    assert det["status"] == "PASS" and det["data"]["cids"] == [CID], det
    assert det["data"]["frames"] >= 5 and det["data"]["qr_ms_max"] > 0
    assert r["spool"]["status"] == "PASS" and r["spool"]["data"]["free_bytes"] > 0
    assert not list((tmp_path / "spool").iterdir())  # the probe file is gone
    assert r["server"]["status"] == "PASS" and "with an empty form: HTTP 400" in r["server"]["detail"]
    assert stored == []  # the probe is refused by the contract: nothing is stored
    assert r["libraries"]["status"] == "PASS" and r["libraries"]["data"]["decoder"] == "zxing"


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/upload", "/"])
def test_a_wrong_upload_path_fails_the_server_line_and_stores_nothing(tmp_path: Path, path: str) -> None:
    with ReceiverProcess(tmp_path / "receiver") as receiver:
        url = receiver.url + path
        rc, r, _ = check(write_config(tmp_path, "  kind: file\n  path: /nowhere.mp4\n", url=url))
        stored = receiver.events()
    assert rc == 1 and stored == []
    server = r["server"]
    assert server["status"] == "FAIL" and f"POST {url} with an empty form: HTTP 40" in server["detail"]
    assert server["hint"] == f"upload.url must be the edge server's /cid endpoint, e.g. {receiver.url}/cid"


@pytest.mark.parametrize(("status", "headers", "says"), [
    (301, {"Location": "/v2/cid"}, "uploads never follow redirects: set upload.url to http://127.0.0.1:{port}/v2/cid"),
    (401, {}, "the server wants a token: set upload.token_file"),
    (201, {}, "this is not an edge server's /cid endpoint"),
    (503, {}, "look at the edge server's logs"),
])
def test_the_server_line_says_what_is_wrong_with_the_endpoint(tmp_path: Path, status: int,
                                                              headers: dict[str, str], says: str) -> None:
    from tests.flaky_server import FlakyServer

    with FlakyServer([(status, headers)]) as server:
        rc, r, _ = check(write_config(tmp_path, "  kind: file\n  path: /nowhere.mp4\n", url=server.url))
        port = server.httpd.server_address[1]
    assert rc == 1 and r["server"]["status"] == "FAIL"
    assert says.format(port=port) in r["server"]["hint"]


def test_a_label_that_is_not_a_cid_is_reported_as_rejected(tmp_path: Path) -> None:
    video = make_qr_video(tmp_path / "bad.mp4", payload="http://example.com/x y", seconds=1.0)
    rc, r, out = check(write_config(tmp_path, f"  kind: file\n  path: {video}\n"))
    assert rc == 0, out
    assert r["detector"]["data"]["codes"] == ["http://example.com/x y"] and r["detector"]["data"]["cids"] == []
    assert "rejected" in r["detector"]["detail"]


def test_check_fails_with_an_actionable_hint_for_each_broken_part(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool folder should be")
    cfg = write_config(tmp_path, f"  kind: v4l2\n  path: {tmp_path / 'video9'}\n",
                       url=f"http://127.0.0.1:{closed_port()}/cid", spool=blocker / "spool",
                       extra=f"  token_file: {tmp_path / 'missing-token'}\n")
    rc, r, _ = check(cfg)
    assert rc == 1
    assert r["source"]["status"] == "FAIL" and "v4l2-ctl --list-devices" in r["source"]["hint"]
    assert r["detector"]["status"] == "SKIP"
    assert r["spool"]["status"] == "FAIL" and "spool.dir" in r["spool"]["hint"]
    assert r["server"]["status"] == "FAIL" and "connection refused by 127.0.0.1:" in r["server"]["detail"]
    assert "upload.url" in r["server"]["hint"]
    assert r["token"]["status"] == "FAIL" and "missing-token" in r["token"]["detail"]


def test_text_output_is_a_table_with_hints_under_failures(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"  kind: file\n  path: {tmp_path / 'nowhere.mp4'}\n")
    rc, _, out = check(cfg, json_out=False)
    assert rc == 1
    lines = out.splitlines()
    fail = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL  source"))
    assert lines[fail + 1].strip().startswith("-> ") and "source.path" in lines[fail + 1]
    assert any(ln.startswith("SKIP  server") for ln in lines)  # no upload.url
    assert lines[-1].startswith("3 passed, 1 failed, 3 skipped")


@pytest.mark.slow
def test_a_live_pipe_camera_is_measured_at_its_real_rate(qr_video: Path, tmp_path: Path) -> None:
    """A subprocess streaming MPEG-TS in real time at 30 fps: the rate comes from the stream's own
    timestamps (stamped capture times), so it is the camera's pace, not the read speed."""
    cmd = f"{sys.executable} {ROOT / 'tests' / 'stream_sample.py'} {qr_video} --loop"
    rc, r, out = check(write_config(tmp_path, f"  kind: pipe\n  command: {cmd}\n"), "--frames", "45")
    assert rc == 0, out
    assert r["source"]["data"]["fps"] == pytest.approx(30, rel=0.1), r["source"]
    assert "measured over" in r["source"]["detail"]
    assert r["detector"]["data"]["cids"] == [CID]


@pytest.mark.slow
@pytest.mark.parametrize("burst", [10, 1], ids=["bursty", "steady"])
def test_a_raw_h264_pipe_is_measured_from_capture_times(burst: int, qr_video_4s: Path, tmp_path: Path) -> None:
    """rpicam-vid's raw H.264 has no timestamps and a loaded Pi hands it over ten frames at a time:
    check still reports 30 fps and a keyframe every second (the camera's settings), within 5%, and how
    much of each second detection decodes (detector.max_blind_s, the default 0.5 s left undecoded)."""
    cmd = f"{sys.executable} {ROOT / 'tests' / 'bursty_h264.py'} {qr_video_4s} --loop --burst {burst}"
    cfg = write_config(tmp_path, f"  kind: pipe\n  command: {cmd}\n  input_format: h264\n")
    rc, r, out = check(cfg, "--frames", "120")
    assert rc == 0, out
    data = r["source"]["data"]
    assert data["fps"] == pytest.approx(30, rel=0.05), r["source"]
    assert data["keyframe_interval_s"] == pytest.approx(1.0, rel=0.05), r["source"]
    assert "stamped at 30 fps from sps" in r["source"]["detail"]
    assert data["decoded_of_interval_s"] == pytest.approx(0.5, abs=0.05), r["source"]
    assert "detection decodes the first 0.5" in r["source"]["detail"]


@pytest.mark.parametrize(("open_gop", "says"), [
    (False, "detection decodes the first 0.50 s of each (detector.max_blind_s 0.5)"),
    (True, "detection decodes every frame (open GOPs: a picture shown before the keyframe it follows)"),
])
def test_check_says_how_much_of_each_interval_replay_decodes_and_why_all_of_it(
        open_gop: bool, says: str, tmp_path: Path) -> None:
    """A file with B-frames: closed GOPs leave the end of each interval undecoded, as the decode stage does
    (tests/test_max_blind_pipeline.py), open ones are decoded whole and check says why."""
    video = make_video(tmp_path / "line.mp4", seconds=5, fps=30, gop=30, bframes=2, open_gop=open_gop)
    rc, r, out = check(write_config(tmp_path, f"  kind: file\n  path: {video}\n"), "--frames", "150")
    assert rc == 0, out
    assert says in r["source"]["detail"], r["source"]
    assert (r["source"]["data"]["decoded_of_interval_s"] is None) == open_gop


@pytest.mark.slow
def test_a_camera_that_sends_nothing_fails_within_the_deadline(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "  kind: pipe\n  command: sleep 60\n  open_timeout_s: 1\n")
    rc, r, _ = check(cfg, "--seconds", "1", timeout=20)
    assert rc == 1
    assert r["source"]["status"] == "FAIL" and "no frames in" in r["source"]["hint"]
    assert "source.command" in r["source"]["hint"]


def test_a_missing_camera_command_says_what_to_install(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "  kind: pipe\n  command: rpicam-vid-not-installed -t 0 -o -\n")
    rc, r, _ = check(cfg)
    assert rc == 1
    assert "rpicam-apps" in r["source"]["hint"]


def test_a_camera_command_that_exits_is_named_in_its_own_words(tmp_path: Path) -> None:
    """Its stderr is the agent's log now (masked): the failure line still carries why it stopped."""
    cmd = "\"sh -c 'echo rpicam-vid: no cameras available >&2; exit 1'\""
    rc, r, _ = check(write_config(tmp_path, f"  kind: pipe\n  command: {cmd}\n"))
    assert rc == 1
    assert "the command exited 1: rpicam-vid: no cameras available" in r["source"]["detail"], r["source"]
    assert "run source.command by hand" in r["source"]["hint"]


@pytest.mark.slow
def test_url_source_over_http_is_read_and_measured(qr_video: Path, tmp_path: Path) -> None:
    """An IP camera stand-in: MPEG-TS served over HTTP from 127.0.0.1 (RTSP needs a camera we lack;
    both go through the same `url` source and FFmpeg's network demuxers)."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    ts = tmp_path / "www" / "stream.ts"
    ts.parent.mkdir()
    with ts.open("wb") as out:
        subprocess.run([sys.executable, str(ROOT / "tests" / "stream_sample.py"), str(qr_video), "--fast"],
                       stdout=out, check=True, timeout=60)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(ts.parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/stream.ts"
        rc, r, out = check(write_config(tmp_path, f"  kind: url\n  path: {url}\n"), "--frames", "30")
        assert r["source"]["status"] == "PASS", out
        assert "h264 320x240" in r["source"]["detail"]
        assert r["detector"]["data"]["cids"] == [CID]
    finally:
        httpd.shutdown()
        httpd.server_close()


# Makes pyzbar fail to import exactly as on a device without libzbar0: ctypes' find_library finds no zbar.
NO_ZBAR = """import ctypes.util
_find = ctypes.util.find_library
ctypes.util.find_library = lambda name: None if name == "zbar" else _find(name)
"""


@pytest.mark.slow
def test_check_warns_when_zbar_is_missing_and_says_what_it_costs(qr_video: Path, tmp_path: Path) -> None:
    shim = tmp_path / "no-libzbar0"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_ZBAR)
    cfg = write_config(tmp_path, f"  kind: file\n  path: {qr_video}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT")}
    env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check", "--config", str(cfg), "--frames", "10"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)
    lines = res.stdout.splitlines()
    libs = next(i for i, ln in enumerate(lines) if ln.startswith(("WARN  libraries", "PASS  libraries")))
    assert lines[libs].startswith("WARN  libraries"), res.stdout
    assert "no zbar (Unable to find zbar shared library)" in lines[libs]
    assert "16 CIDs read and 3 no-reads without it, 18 and 1 with it" in lines[libs]
    assert lines[libs + 1].strip() == "-> install libzbar0: sudo apt-get install libzbar0, then restart the service"
    assert res.returncode == 0 and "1 warned" in lines[-1]  # the agent works, reading less: not a failure


def test_an_empty_device_id_is_the_host_name_in_check_as_in_the_clips(qr_video: Path, tmp_path: Path) -> None:
    from edge_agent.config import parse_config

    host = socket.gethostname()
    cfg = write_config(tmp_path, f"  kind: file\n  path: {qr_video}\n", extra='device_id: ""\n')
    _rc, results, _ = check(cfg, "--frames", "5")
    assert f"device_id={host} (the host name) " in results["config"]["detail"]
    # what the clip stage puts in each clip's metadata
    assert parse_config('device_id: ""\n', "c.yaml", strict_source=False, env={}).device_id == host
    assert parse_config("device_id: line-4\n", "c.yaml", strict_source=False, env={}).device_id == "line-4"
