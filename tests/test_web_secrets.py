"""No password on any page or in any log: a real `run` whose camera URL (or pipe command) and upload URL
carry passwords, with nothing listening, so the source error naming them is shown everywhere it can be:
/healthz (open to anyone), /api/status and /metrics (behind the web password), the log, and the
`check` and `config show` commands."""

from __future__ import annotations

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


def _source_error(web: Web) -> str | None:
    st = requests.get(web.url + "/api/status", auth=("tech", PASSWORD), timeout=5).json()
    return st["source"]["error"]


@pytest.mark.slow
@pytest.mark.parametrize(("source", "masked", "secrets"), [
    (f"source:\n  kind: url\n  path: rtsp://admin:{CAM_PASSWORD}@127.0.0.1:{{port}}/stream\n",
     "rtsp://admin:***@127.0.0.1", [CAM_PASSWORD]),
    ("source:\n  kind: pipe\n  command: \"sh -c 'exit 3' camera --password CamPass123 RTSP_PASS=EnvPass789\"\n",
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
