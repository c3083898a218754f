"""No password on any page or in any log: a real `run` whose camera URL (or pipe command) and upload URL
carry passwords, with nothing listening (the command printing its own on stderr), so the source error
naming them is shown everywhere it can be:
/healthz (open to anyone), /api/status and /metrics (behind the web password), the log, and the
`check` and `config show` commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from edge_agent.redact import redact, redact_data
from edge_agent.service.http import STATUS_WORDS
from tests.cli_in_process import Cli
from tests.receiver_fixture import free_port
from tests.web_fixture import PASSWORD, Web, wait_for

CAM_PASSWORD = "CamPass123"
UPLOAD_PASSWORD = "UpPass456"


def _pages(web: Web) -> dict[str, str]:
    auth = ("tech", PASSWORD)
    return {"/healthz": requests.get(web.url + "/healthz", timeout=5).text,
            "/api/status": requests.get(web.url + "/api/status", auth=auth, timeout=5).text,
            "/metrics": requests.get(web.url + "/metrics", auth=auth, timeout=5).text}


def _source_error(web: Web, password: str = PASSWORD) -> str | None:
    st = requests.get(web.url + "/api/status", auth=("tech", password), timeout=5).json()
    return st["source"]["error"]


@pytest.mark.slow
@pytest.mark.parametrize(("source", "masked", "secrets"), [
    (f"source:\n  kind: url\n  path: rtsp://admin:{CAM_PASSWORD}@127.0.0.1:{{port}}/stream\n",
     "rtsp://admin:***@127.0.0.1", [CAM_PASSWORD]),
    # the command says its secret on stderr too, as ffmpeg names the URL it cannot open
    ("source:\n  kind: pipe\n  command: \"sh -c 'echo cannot open rtsp://admin:CamPass123@cam/s >&2; exit 3'"
     " camera --password CamPass123 RTSP_PASS=EnvPass789\"\n",
     "--password *** RTSP_PASS=***", [CAM_PASSWORD, "EnvPass789"]),
], ids=["rtsp-url", "pipe-command"])
@pytest.mark.slow
def test_no_password_on_any_page_or_in_the_log(tmp_path: Path, source: str, masked: str, secrets: list[str],
                                               in_process: Cli) -> None:
    closed = free_port()  # nothing listens there: the camera cannot be opened, the server not reached
    upload = f"upload:\n  url: http://edge:{UPLOAD_PASSWORD}@127.0.0.1:{closed}/cid\n"
    secrets = [*secrets, UPLOAD_PASSWORD]
    with Web(tmp_path, password=True, source=source.format(port=closed) + upload) as web:
        error = wait_for(lambda: _source_error(web), 30, "the source error in /api/status")
        assert masked in error, error  # the error is there, and names the source, masked
        pages = _pages(web)
        health = requests.get(web.url + "/healthz", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        # no text but the status and the fixed words of a part's state (never an error's text)
        words = STATUS_WORDS | {"unhealthy"}
        assert all(not isinstance(v, str) or v in words for v in health.json().values()), health.text
        assert web.stop() == 0
    log = web.log.read_text()
    assert masked in log  # the log names the source too
    shown = {**pages, "log": log}
    for cmd in (["check"], ["config", "show"]):  # what they print, through the CLI's entry point in this process
        out = in_process(*cmd, "--config", str(web.config))
        shown[" ".join(cmd)] = out.stdout + out.stderr
    assert "***" in shown["config show"]
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"{secret} in {where}: {text[-3000:]}"


@pytest.mark.parametrize(("text", "want"), [
    ("cannot open url source rtsp://admin:CamPass123@10.0.0.7/s: [Errno 111] refused: 'rtsp://admin:CamPass123@10.0.0.7/s'",
     "cannot open url source rtsp://admin:***@10.0.0.7/s: [Errno 111] refused: 'rtsp://admin:***@10.0.0.7/s'"),
    ("rtsp://admin:p@ss@cam/x", "rtsp://admin:***@cam/x"),  # a raw '@' in the password
    ("https://TOKEN123@edge/cid", "https://***@edge/cid"),
    ("rtsp://cam.local:554/stream", "rtsp://cam.local:554/stream"),
    ("cam --password X1 --user bob", "cam --password *** --user bob"),
    ('cam --password="a b" -x', "cam --password=*** -x"),
    ("gst-launch-1.0 rtspsrc location=rtsp://h/ user-id=admin user-pw=Secr3t ! fakesink",
     "gst-launch-1.0 rtspsrc location=rtsp://h/ user-id=admin user-pw=*** ! fakesink"),
    ("env RTSP_PASS=abc API_KEY=k ./cam", "env RTSP_PASS=*** API_KEY=*** ./cam"),
    ("curl -u bob:hunter2 http://x", "curl -u bob:*** http://x"),
    ('ffmpeg -headers "Authorization: Basic dXNlcjpwYXNz" -i http://h/',
     'ffmpeg -headers "Authorization: Basic ***" -i http://h/'),
    ("http://h/cid?token=abc&x=1", "http://h/cid?token=***&x=1"),
    ("libcamera-vid -t 0 --inline -o - key-int-max=30 cid=CID-1",
     "libcamera-vid -t 0 --inline -o - key-int-max=30 cid=CID-1"),
])
def test_redact_masks_logins_and_command_secrets_only(text: str, want: str) -> None:
    assert redact(text) == want


def test_redact_data_masks_secret_keys_but_shows_where_a_secret_is_kept() -> None:
    data = {"source": {"options": {"password": "x1", "rtsp_transport": "tcp"}, "path": "rtsp://u:p@h/"},
            "http": {"password_file": "/etc/edge-agent/http-password"}, "n": 3}
    assert redact_data(data) == {"source": {"options": {"password": "***", "rtsp_transport": "tcp"},
                                            "path": "rtsp://u:***@h/"},
                                 "http": {"password_file": "/etc/edge-agent/http-password"}, "n": 3}


# Planted in every field that can hold a secret: each must show nowhere, whatever shows the config.
UPLOAD_SECRET, QUERY_TOKEN = "UpL0adPassw0rd", "QueryTok3n"
SOURCE_SECRET, SOURCE_TOKEN = "CamPass123", "SrcTok3n"
COMMAND_SECRET, COMMAND_ENV_SECRET = "CmdPass1", "EnvPass2"
BEARER_TOKEN, WEB_PASSWORD = "B3arerTok3n", "WebPassw0rd"
PLANTED = [UPLOAD_SECRET, QUERY_TOKEN, SOURCE_SECRET, SOURCE_TOKEN, COMMAND_SECRET, COMMAND_ENV_SECRET, BEARER_TOKEN,
           WEB_PASSWORD]


def _private(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _spool_bytes(spool: Path, when: str) -> dict[str, str]:
    """Every file of the spool (queue database and its write-ahead log, sidecars, quarantine notes), as text."""
    return {f"spool {p.relative_to(spool)} {when}": p.read_bytes().decode("latin-1")
            for p in spool.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_no_planted_secret_in_any_command_page_log_or_spool(tmp_path: Path, in_process: Cli,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A device whose every secret-holding field carries one: the upload URL's login and query token,
    the camera URL's, a pipe command's options and variables, the bearer token and the web password in
    their files (the token for the commands only: beside a login in the URL the uploader refuses it). Its
    daemon runs (the camera unreachable, the server quarantining one clip, redirecting
    another to a path relative to the URL, then failing), and then every command a technician has, in
    text and JSON: not one secret in any of it, nor in the pages, the log or the spool's files."""
    from edge_agent.delivery.spool import Spool
    from tests.flaky_server import FlakyServer
    from tests.media_factory import make_video
    from tests.spool_helpers import add_clip, spool_config

    closed = free_port()
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_config(spool_dir))
    for _ in range(3):
        add_clip(spool, size=2_000)
    spool.close()
    token = _private(tmp_path / "upload-token", BEARER_TOKEN)
    web_password = _private(tmp_path / "web-password", WEB_PASSWORD)
    command = f"sh -c 'exit 3' camera --password {COMMAND_SECRET} RTSP_PASS={COMMAND_ENV_SECRET}"
    script = [(404, {}, b'{"detail": "no such device"}'), (302, {"Location": "/v2/cid"})]
    with FlakyServer(script + [(503, {}, b"busy")] * 500) as server:
        port = server.httpd.server_address[1]
        upload = f"http://uploader:{UPLOAD_SECRET}@127.0.0.1:{port}/cid?token={QUERY_TOKEN}"
        source = (f"source:\n  kind: url\n  path: rtsp://admin:{SOURCE_SECRET}@127.0.0.1:{closed}/s?token={SOURCE_TOKEN}\n"
                  f"  command: \"{command}\"\n"
                  f"upload:\n  url: {upload}\n  backoff_base_s: 0.05\n  backoff_cap_s: 0.2\n")
        with Web(tmp_path, source=source, http=f"  password_file: {web_password}\n") as web:
            wait_for(lambda: len(server.seen) >= 3, 30, "the quarantine, the redirect and a failure")
            wait_for(lambda: _source_error(web, WEB_PASSWORD), 30, "the source error in /api/status")
            auth = ("tech", WEB_PASSWORD)
            shown = {f"page {path}": requests.get(web.url + path, auth=auth, timeout=5).text
                     for path in ("/", "/healthz", "/api/status", "/metrics")}
            assert web.stop() == 0
        shown["log"] = web.log.read_text()
        shown.update(_spool_bytes(spool_dir, "as the daemon left it"))  # before requeue empties quarantine/
        # the commands see the bearer token too (a login in the URL beside it is refused: its error is shown)
        web.config.write_text(web.config.read_text().replace("  backoff_base_s:", f"  token_file: {token}\n"
                                                                                    "  backoff_base_s:"))
        cfg = str(web.config)
        video = make_video(tmp_path / "label.mp4", seconds=2, size=(320, 240), codes=[("CID-5EC2E7", 0.2, 1.8)],
                           scale=4)
        commands = [("check", "--seconds", "1", "--frames", "5"),
                    ("check", "--seconds", "1", "--frames", "5", "--json"),
                    ("config", "show"), ("config", "show", "--json"), ("config", "validate"),
                    ("spool", "status"), ("spool", "status", "--json"), ("spool", "list"), ("spool", "list", "--json"),
                    ("spool", "flush", "--timeout", "1"), ("spool", "requeue"), ("noreads",), ("noreads", "--json"),
                    ("replay", "-q", "--drain-timeout", "1", "--report", "-", str(video)),
                    ("replay", "--drain-timeout", "0", str(video))]
        for argv in commands:
            res = in_process(*argv, "--config", cfg)
            shown[" ".join(argv)] = res.stdout + res.stderr
        monkeypatch.setenv("EDGE_AGENT__SOURCE__KIND", "pipe")  # the command is run: its failure quotes it
        for argv in [("snapshot", "-o", str(tmp_path / "s.jpg")), ("tune", "--count", "1"),
                     ("check", "--seconds", "1")]:
            res = in_process(*argv, "--config", cfg)
            shown[f"{' '.join(argv)} (pipe)"] = res.stdout + res.stderr
        monkeypatch.delenv("EDGE_AGENT__SOURCE__KIND")
        bad = tmp_path / "bad.yaml"  # a value refused by the schema is quoted in the error
        bad.write_text(f"upload:\n  url: ftp://uploader:{UPLOAD_SECRET}@127.0.0.1/cid?token={QUERY_TOKEN}\n")
        res = in_process("config", "validate", str(bad))
        assert res.returncode == 78 and "upload.url" in res.stderr, res.stderr
        shown["config validate (refused)"] = res.stderr
    shown.update(_spool_bytes(spool_dir, "at the end"))
    # each was shown, masked: not a blank page passing for a clean one
    status = shown["spool status"]
    assert re.search(r"^upload\.url +http://uploader:\*\*\*@127\.0\.0\.1", status, re.M), status
    assert "token=***" in shown["spool status --json"] and "rtsp://admin:***@" in shown["config show"]
    assert "redirect to http://uploader:***@127.0.0.1" in shown["log"], shown["log"][-3000:]
    assert "--password *** RTSP_PASS=***" in shown["snapshot -o " + str(tmp_path / "s.jpg") + " (pipe)"]
    assert any(name.startswith("spool quarantine/") for name in shown)
    for where, text in shown.items():
        for secret in PLANTED:
            assert secret not in text, f"{secret} in {where}: {text[-3000:]}"


def test_a_secret_printed_in_pieces_is_masked_as_in_one_piece() -> None:
    """The one rule behind every command's output masks a line when it ends: `print("--password", x)`
    writes the option and its value apart, a progress bar redraws after '\\r', and a flush ends a line."""
    import io

    from edge_agent.redact import RedactedStream

    out = io.StringIO()
    stream = RedactedStream(out)
    print("camera", "--password", "Secr3t", "--user", "bob", file=stream)
    stream.write("rtsp://admin:")
    stream.write("Pass9@cam/s\r")
    stream.write("token=abc")
    assert out.getvalue() == "camera --password *** --user bob\nrtsp://admin:***@cam/s\r"
    stream.flush()
    assert out.getvalue().endswith("\rtoken=***")
