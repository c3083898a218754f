"""The device's web server over plain HTTP: a real `run` replaying a sample video in real time."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from tests import agent_process
from tests.web_fixture import CONVEYOR, PASSWORD, Web, wait_for


@pytest.mark.slow
def test_status_frames_events_thumbnails_and_mjpeg(tmp_path: Path) -> None:
    with Web(tmp_path, CONVEYOR) as web:
        page = requests.get(web.url + "/", timeout=5)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
        assert 'id="live"' in page.text and "cdn" not in page.text.lower()

        first = requests.get(web.url + "/frame.jpg", timeout=5)
        assert first.status_code == 200 and first.headers["Content-Type"] == "image/jpeg"
        assert first.content[:2] == b"\xff\xd8"
        # one second later, the picture is another one
        wait_for(lambda: requests.get(web.url + "/frame.jpg", timeout=5).content != first.content, 3,
                 "/frame.jpg to change")

        def events() -> list:
            return requests.get(web.url + "/api/status", timeout=5).json()["events"]

        ev = wait_for(events, 20, "an event in /api/status")[0]
        assert ev["cid"] and ev["state"] in ("recording", "queued")
        st = requests.get(web.url + "/api/status", timeout=5).json()
        assert st["reads"]["1m"]["reads"] >= 1 and st["reads"]["1m"]["rate"] is not None
        assert st["source"]["frames"] > 0 and st["source"]["dropped"] == 0
        assert st["view"]["width"] == 1280 and st["view"]["advice"]
        assert "clips" in st["spool"]
        thumb = requests.get(web.url + ev["thumbnail"], timeout=5)
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8" and len(thumb.content) < 20_000

        with requests.get(web.url + "/live.mjpeg", stream=True, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
            seen = b""
            for chunk in r.iter_content(8192):
                seen += chunk
                if seen.count(b"Content-Type: image/jpeg") >= 2:
                    break
        assert seen.count(b"\xff\xd8") >= 2
        assert web.stop() == 0


@pytest.mark.slow
def test_pictures_are_served_by_id_only(tmp_path: Path) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8not for the web")
    with Web(tmp_path, CONVEYOR) as web:
        for path in ("/noreads/../secret.jpg", "/noreads/%2e%2e%2fsecret.jpg", "/noreads/secret.jpg",
                     "/thumbs/nothing.jpg", "/../../etc/passwd", "/noreads/noread-1.json"):
            r = requests.get(web.url + path, timeout=5)
            assert r.status_code == 404, path
            assert b"not for the web" not in r.content


@pytest.mark.slow
def test_a_password_guards_every_path_but_healthz(tmp_path: Path) -> None:
    with Web(tmp_path, CONVEYOR, password=True) as web:
        for path in ("/", "/api/status", "/frame.jpg", "/metrics", "/live.mjpeg"):
            r = requests.get(web.url + path, timeout=5)
            assert r.status_code == 401, path
            assert r.headers["WWW-Authenticate"].startswith("Basic")
            assert requests.get(web.url + path, auth=("tech", "wrong"), timeout=5).status_code == 401
        assert requests.get(web.url + "/healthz", timeout=5).status_code in (200, 503)
        assert requests.get(web.url + "/api/status", auth=("tech", PASSWORD), timeout=5).status_code == 200
        assert requests.get(web.url + "/frame.jpg", auth=("any", PASSWORD), timeout=5).status_code == 200


@pytest.mark.slow
def test_metrics_can_be_public_for_a_scraper(tmp_path: Path) -> None:
    with Web(tmp_path, CONVEYOR, "  metrics_public: true\n", password=True) as web:
        r = requests.get(web.url + "/metrics", timeout=5)
        assert r.status_code == 200 and "edge_agent_frames_total" in r.text
        assert requests.get(web.url + "/api/status", timeout=5).status_code == 401


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_https_with_a_certificate(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "web.key", "-out",
                    "web.pem", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   cwd=tmp_path, check=True, capture_output=True)
    with Web(tmp_path, CONVEYOR, password=True, tls=(tmp_path / "web.pem", tmp_path / "web.key")) as web:
        assert web.url.startswith("https://")
        ok = requests.get(web.url + "/api/status", auth=("tech", PASSWORD), verify=web.verify, timeout=5)
        assert ok.status_code == 200 and ok.json()["mode"] == "daemon"
        with pytest.raises(requests.ConnectionError):  # no plain HTTP on a TLS port
            requests.get(web.url.replace("https://", "http://") + "/healthz", timeout=5)
        # a client that never says hello does not block the others
        with socket.create_connection(("127.0.0.1", web.port)):
            assert requests.get(web.url + "/healthz", verify=web.verify, timeout=5).status_code in (200, 503)


def test_run_refuses_to_listen_beyond_loopback_without_a_password(tmp_path: Path) -> None:
    web = Web(tmp_path, CONVEYOR, "  host: 0.0.0.0\n")
    assert web.proc.wait(30) == 78
    err = web.log.read_text()
    assert "http.password_file" in err and "0.0.0.0" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_tune_web_refuses_too_and_serves_the_page_without_the_daemon(tmp_path: Path) -> None:
    refused = Web(tmp_path, CONVEYOR, "  host: 0.0.0.0\n", command=("tune", "--web"))
    assert refused.proc.wait(30) == 78
    assert "http.password_file" in refused.log.read_text()
    with Web(tmp_path, CONVEYOR, command=("tune", "--web")) as web:
        assert "live" in requests.get(web.url + "/", timeout=5).text
        first = requests.get(web.url + "/frame.jpg", timeout=5)
        assert first.status_code == 200
        wait_for(lambda: requests.get(web.url + "/frame.jpg", timeout=5).content != first.content, 3,
                 "tune's picture to change")
        st = requests.get(web.url + "/api/status", timeout=5).json()
        assert st["mode"] == "tune" and st["view"]["width"] == 1280 and st["events"] == []
        assert not (tmp_path / "spool").exists()  # nothing recorded
        assert web.stop() == 0


def test_the_old_metrics_section_names_its_new_name(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("metrics:\n  port: 9108\n", encoding="utf-8")
    res = agent_process.run(["check", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert res.returncode == 78
    assert "http:" in res.stderr and "renamed" in res.stderr
