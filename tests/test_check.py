"""`edge-agent check` passes on a working set-up and fails with an actionable hint otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.receiver_fixture import ReceiverProcess

SAMPLE = Path(__file__).resolve().parent.parent / "sample_media" / "conveyor_720p30.mp4"


def check(cfg: Path) -> tuple[int, dict[str, dict[str, str]]]:
    res = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check", "--json", "--seconds", "2", "--config",
                          str(cfg)], capture_output=True, text=True, check=False, timeout=60)
    return res.returncode, {r["name"]: r for r in json.loads(res.stdout)}


def test_check_passes_with_a_working_source_spool_and_server(receiver: ReceiverProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"source:\n  kind: file\n  path: {SAMPLE}\nupload:\n  url: {receiver.cid_url}\n"
                   f"spool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\n")
    rc, r = check(cfg)
    assert rc == 0, r
    assert r["source"]["status"] == "PASS" and "1280x720" in r["source"]["detail"]
    assert r["decoder"]["status"] == "PASS" and r["spool"]["status"] == "PASS" and r["server"]["status"] == "PASS"


def test_check_fails_with_hints(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"source:\n  kind: v4l2\n  path: {tmp_path / 'video9'}\nupload:\n  url: http://127.0.0.1:9/cid\n"
                   f"spool:\n  dir: /proc/edge-agent-spool\n")
    rc, r = check(cfg)
    assert rc == 1
    assert r["source"]["status"] == "FAIL" and "v4l2-ctl" in r["source"]["hint"]
    assert r["spool"]["status"] == "FAIL" and r["spool"]["hint"]
    assert r["server"]["status"] == "FAIL" and "upload.url" in r["server"]["hint"]


def test_url_source_over_http_is_read_and_measured(tmp_path: Path) -> None:
    """An IP camera stand-in: MPEG-TS served over HTTP from 127.0.0.1 (RTSP needs a camera we lack;
    both go through the same `url` source and FFmpeg's network demuxers)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    ts = tmp_path / "stream.ts"
    with ts.open("wb") as out:
        subprocess.run([sys.executable, str(Path(__file__).parent / "stream_sample.py"), str(SAMPLE), "--fast"],
                       stdout=out, check=True, timeout=60)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/stream.ts"
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"source:\n  kind: url\n  path: {url}\nspool:\n  dir: {tmp_path / 'spool'}\n"
                       "  min_free_bytes: 0\n")
        rc, r = check(cfg)
        assert r["source"]["status"] == "PASS", r
        assert "h264 1280x720" in r["source"]["detail"]
    finally:
        httpd.shutdown()
