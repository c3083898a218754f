"""The uploader against real HTTP servers on 127.0.0.1: the request is exactly the wire contract, the
body is streamed fresh from the clip file on every attempt, timeouts mean what the config says,
stop() and wake() act at once, and the bearer token comes from a file or systemd credentials
without ever reaching a log."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import __version__
from edge_agent.config import Config
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import Uploader
from edge_agent.metrics import Metrics
from tests.flaky_server import FlakyServer
from tests.metric_values import observations, total, value
from tests.spool_helpers import add_clip, fast_upload, spool_config

try:  # the receiver extra: a real FastAPI edge server
    import fastapi
    import uvicorn
    from fastapi import File, Form, Header, UploadFile
except ImportError:
    fastapi = uvicorn = None  # type: ignore[assignment]


def uploader(spool: Spool, url: str | None, m: Metrics | None = None, **kw: Any) -> Uploader:
    cfg = fast_upload(url or "http://unused", **kw)
    return Uploader(spool, cfg if url else cfg.model_copy(update={"url": None}), m or Metrics(), __version__)


def wait_for(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


# --- the request ----------------------------------------------------------------------------------


def test_request_is_exactly_the_wire_contract(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    event_id, cid, sha = add_clip(spool)
    queued_meta = spool.entries()[0].metadata
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)  # a secret file must be private, or the agent refuses it
    with FlakyServer() as server:
        assert uploader(spool, server.url, token_file=str(token)).drain(10)
    (seen,) = server.seen
    assert list(seen.fields) == ["cid", "metadata", "video"]
    assert seen.fields["cid"].decode() == cid
    assert json.loads(seen.fields["metadata"]) == queued_meta
    assert seen.filename == f"{event_id}.mp4" and seen.content_type == {"video": "video/mp4"}
    assert seen.video_sha256 == sha
    h = seen.headers
    assert h["Idempotency-Key"] == event_id
    assert h["User-Agent"] == f"edge-agent/{__version__}"
    assert h["Authorization"] == "Bearer s3cret-token"
    assert h["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(h["Content-Length"]) == seen.body_bytes and "Transfer-Encoding" not in h


def test_no_token_no_authorization_header(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    with FlakyServer() as server:
        assert uploader(spool, server.url).drain(10)
    assert "Authorization" not in server.seen[0].headers


def test_cid_only_event_goes_without_a_video_part(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id = str(uuid.uuid4())
    assert spool.put(event_id, "CID-NOCLIP", {"event_id": event_id, "clip": {"error": "source ended"}}, None)
    with FlakyServer() as server:
        assert uploader(spool, server.url).drain(10)
    (seen,) = server.seen
    assert list(seen.fields) == ["cid", "metadata"] and seen.filename is None
    assert json.loads(seen.fields["metadata"])["clip"]["error"] == "source ended"


@pytest.fixture
def fastapi_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The edge server as integrators write it (docs/architecture.md, section 6): FastAPI with Form and File."""
    if fastapi is None or uvicorn is None:
        pytest.skip("fastapi and uvicorn (the receiver extra) are not installed")
    got: list[dict[str, Any]] = []
    app = fastapi.FastAPI()

    @app.post("/cid", status_code=201)
    async def cid_endpoint(cid: str = Form(...), metadata: str = Form(None), video: UploadFile = File(None),
                           idempotency_key: str = Header(None)) -> dict[str, str]:
        data = await video.read() if video is not None else None
        got.append({"cid": cid, "metadata": json.loads(metadata), "key": idempotency_key,
                    "filename": video.filename if video else None,
                    "content_type": video.content_type if video else None,
                    "sha256": hashlib.sha256(data).hexdigest() if data is not None else None})
        return {"status": "ok"}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 10)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/cid", got
    finally:
        server.should_exit = True
        thread.join(5)


def test_a_fastapi_edge_server_reads_every_field(tmp_path: Path, fastapi_server: tuple[str, list[Any]]) -> None:
    url, got = fastapi_server
    spool = Spool(spool_config(tmp_path))
    event_id, cid, sha = add_clip(spool, size=300_000)
    only_cid = str(uuid.uuid4())
    spool.put(only_cid, "CID-ONLY", {"event_id": only_cid, "clip": {"error": "x"}}, None)
    assert uploader(spool, url).drain(10)
    assert got[0] == {"cid": cid, "metadata": got[0]["metadata"], "key": event_id, "filename": f"{event_id}.mp4",
                      "content_type": "video/mp4", "sha256": sha}
    assert got[0]["metadata"]["event_id"] == event_id
    assert got[1]["cid"] == "CID-ONLY" and got[1]["key"] == only_cid and got[1]["sha256"] is None


def test_every_attempt_sends_a_fresh_full_body_under_the_same_key(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, _, sha = add_clip(spool, size=700_000)
    with FlakyServer([500, 502]) as server:
        assert uploader(spool, server.url).drain(10)
    assert [s.key for s in server.seen] == [event_id] * 3
    assert all(s.complete and s.video_sha256 == sha for s in server.seen)
    assert len({s.fields["metadata"] for s in server.seen}) == 1
    assert len({s.headers["Content-Type"] for s in server.seen}) == 3  # a new boundary each time


class DiscardServer:
    """Reads each request in small pieces, keeps only a hash of it, answers 201: costs no memory."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/cid"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as f:
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while self.received < length and (chunk := f.read1(65536)):
                self.received += len(chunk)
            conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_the_body_is_streamed_not_built_in_memory(tmp_path: Path) -> None:
    """requests' files= would hold the clip twice (read, then encoded): 48 MB here; streaming holds
    a few blocks."""
    spool = Spool(spool_config(tmp_path))
    add_clip(spool, size=24_000_000)
    server = DiscardServer()
    up = uploader(spool, server.url)
    tracemalloc.start()
    try:
        assert up.drain(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert server.received > 24_000_000
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB of Python allocations while sending a 24 MB clip"


# --- timing and timeouts --------------------------------------------------------------------------


def test_a_bursty_slow_reader_is_not_cut_by_the_connect_timeout(tmp_path: Path) -> None:
    """urllib3 sends the body under the connect timeout; a server (or uplink) that takes the body in
    bursts with pauses longer than that must still get it when it keeps to min_rate_bytes_per_s."""
    spool = Spool(spool_config(tmp_path))
    event_id, _, sha = add_clip(spool, size=6_000_000)
    with FlakyServer(["slow_read"], slow_rate=4_000_000, slow_chunk=1_000_000, rcvbuf=16384) as server:
        up = uploader(spool, server.url, connect_timeout_s=0.1, min_rate_bytes_per_s=1_000_000)
        entry = spool.head()
        assert entry is not None
        assert up.attempt(entry) == "delivered"
    assert server.seen[0].video_sha256 == sha


@pytest.mark.slow
def test_an_upload_slower_than_min_rate_is_cut_and_retried(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, _, sha = add_clip(spool, size=6_000_000)
    with FlakyServer(["slow_read"], slow_rate=200_000, rcvbuf=16384) as server:
        up = uploader(spool, server.url, read_timeout_s=0.3, min_rate_bytes_per_s=10_000_000)
        started = time.monotonic()
        entry = spool.head()
        assert entry is not None
        assert up.attempt(entry) == "retry"
        took = time.monotonic() - started
        assert took < 2.5  # budget 0.3 + 0.6 s, plus at most one blocked send
        assert up.drain(20)  # the next attempt goes at full speed
    assert [s.key for s in server.delivered.values()] == [event_id]
    assert server.delivered[event_id].video_sha256 == sha


def test_stop_cuts_an_upload_in_progress_and_keeps_the_clip(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path))
    add_clip(spool, size=20_000_000)
    with FlakyServer(["slow_read"], slow_rate=500_000, rcvbuf=16384) as server:
        up = uploader(spool, server.url, m, read_timeout_s=60, min_rate_bytes_per_s=100_000)
        up.start()
        assert server.post_started.wait(10)  # a 40 s upload has begun
        started = time.monotonic()
        up.stop(timeout=5)
        assert time.monotonic() - started < 1.0
    entry = spool.head()
    assert entry is not None and entry.attempts == 0  # a stop is not a failed attempt
    assert total(m, "edge_agent_uploads_total") == 0


def test_wake_delivers_a_new_clip_at_once(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    with FlakyServer() as server:
        up = uploader(spool, server.url)
        up.start()
        assert up.wait_idle(5)  # an empty queue: the worker waits up to IDLE_POLL_S (5 s) unless woken
        add_clip(spool)
        up.wake()
        assert wait_for(lambda: server.delivered, 1.0)
        up.stop()


def test_without_a_url_clips_wait_until_a_reload_gives_one(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id = add_clip(spool)[0]
    with FlakyServer() as server:
        up = uploader(spool, None)
        up.start()
        assert not up.deliver_once() and not up.drain(0.2)
        up.apply(Config().model_copy(update={"upload": fast_upload(server.url)}), frozenset({"upload.url"}))
        assert wait_for(lambda: server.delivered, 1.0)
        up.stop()
    assert list(server.delivered) == [event_id]


def test_deliver_once_respects_backoff(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    with FlakyServer([500]) as server:
        up = uploader(spool, server.url, backoff_base_s=30, backoff_cap_s=30)
        assert up.deliver_once()  # the 500
        assert not up.deliver_once()  # backing off: nothing due
        assert len(server.seen) == 1
        entry = spool.head()
        assert entry is not None and entry.retry_at > time.monotonic()


def test_drain_gives_up_at_its_timeout(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    with FlakyServer([503] * 100) as server:
        started = time.monotonic()
        assert not uploader(spool, server.url).drain(0.5)
        assert 0.5 <= time.monotonic() - started < 1.5
    assert spool.head() is not None


def test_clip_changed_after_queueing_is_never_sent_whole_and_its_cid_still_goes(tmp_path: Path) -> None:
    """Same size, other bytes: the body is cut before its last byte, so no server stores a clip
    that does not match its metadata.clip.sha256; the CID then goes out without the video."""
    spool = Spool(spool_config(tmp_path))
    event_id, cid, _ = add_clip(spool, size=2_000_000)
    clip = tmp_path / "clips" / f"{event_id}.mp4"
    data = bytearray(clip.read_bytes())
    data[-10] ^= 0xFF
    clip.write_bytes(bytes(data))
    with FlakyServer() as server:
        assert uploader(spool, server.url).drain(10)
    assert not any(s.complete and s.filename for s in server.seen)  # the damaged clip was cut short
    assert list(server.delivered) == [event_id]
    final = server.delivered[event_id]  # the server may record the cut request after the one that followed it
    assert final.complete and final.filename is None and final.fields["cid"] == cid.encode()
    assert "sha256" in json.loads(final.fields["metadata"])["clip"]["error"]
    assert "sha256" in (tmp_path / "quarantine" / f"{event_id}.video-lost.reason").read_text()


@pytest.mark.parametrize("damage", ["shorter", "missing"])
def test_a_clip_whose_video_is_gone_goes_out_cid_only(tmp_path: Path, damage: str) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, cid, _ = add_clip(spool)
    clip = tmp_path / "clips" / f"{event_id}.mp4"
    if damage == "missing":
        clip.unlink()
    else:
        clip.write_bytes(b"short")
    with FlakyServer() as server:
        assert uploader(spool, server.url).drain(10)
    assert len(server.seen) == 1 and server.seen[0].filename is None and server.seen[0].fields["cid"] == cid.encode()
    meta = json.loads(server.seen[0].fields["metadata"])
    assert meta["clip"]["error"].startswith("video lost on the device: clip file")
    assert "size_bytes" not in meta["clip"] and "sha256" not in meta["clip"]
    assert (tmp_path / "quarantine" / f"{event_id}.video-lost.mp4").exists() == (damage == "shorter")


def test_the_uploader_says_how_many_queued_videos_it_found_lost(tmp_path: Path) -> None:
    """`spool flush` tells how many CIDs went out without their video from this count."""
    spool = Spool(spool_config(tmp_path))
    lost = add_clip(spool)[0]
    add_clip(spool)
    (tmp_path / "clips" / f"{lost}.mp4").unlink()
    with FlakyServer() as server:
        up = uploader(spool, server.url)
        assert up.status().videos_lost == 0
        assert up.drain(10)
    assert up.status().videos_lost == 1 and len(server.delivered) == 2


def test_redirects_are_not_followed_and_the_clip_waits(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    with FlakyServer([(308, {"Location": "https://edge-server/cid"})]) as server:
        up = uploader(spool, server.url)
        entry = spool.head()
        assert entry is not None and up.attempt(entry) == "retry"
        assert len(server.seen) == 1
    entry = spool.head()
    assert entry is not None and entry.last_error is not None
    assert "redirect" in entry.last_error and "https://edge-server/cid" in entry.last_error


def test_results_and_metrics(tmp_path: Path) -> None:
    m = Metrics()
    results: list[tuple[str, str]] = []
    spool = Spool(spool_config(tmp_path))
    a, b, c = (add_clip(spool, size=1000)[0] for _ in range(3))
    with FlakyServer([503, 201, 422, "reset_after_body"]) as server:
        up = Uploader(spool, fast_upload(server.url), m, __version__,
                      on_result=lambda e, _cid, r: results.append((e, r)))
        assert up.drain(10)
    assert results == [(a, "retry"), (a, "delivered"), (b, "quarantined"), (c, "retry"), (c, "duplicate")]
    assert {r: value(m, "edge_agent_uploads_total", result=r)
            for r in ("retry", "delivered", "quarantined", "duplicate")} == {"retry": 2, "delivered": 1,
                                                                             "quarantined": 1, "duplicate": 1}
    count, seconds = observations(m, "edge_agent_upload_seconds")
    assert count == 4 and seconds > 0  # the answered requests: 503, 201, 422, 409 (the reset one had no answer)
    assert observations(m, "edge_agent_detection_to_delivery_seconds")[0] == 2  # delivered and duplicate
    assert value(m, "edge_agent_upload_bytes_total") == 2000


# --- credentials ----------------------------------------------------------------------------------


def test_no_secret_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    token = tmp_path / "token"
    token.write_text("topsecret-123")
    token.chmod(0o600)
    with FlakyServer([401, (403, {}, b"bad token topsecret-123?")]) as server:
        assert uploader(spool, server.url, token_file=str(token)).drain(10)
    assert server.seen[0].headers["Authorization"] == "Bearer topsecret-123"
    assert "topsecret-123" not in caplog.text  # not even where the server echoed it back
    assert "bad token ***?" in caplog.text


@pytest.mark.parametrize("token_file", [None, "edge-token"])
def test_token_from_systemd_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  token_file: str | None) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / (token_file or "upload-token")).write_text("cred-token-9\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    spool = Spool(spool_config(tmp_path / "spool"))
    add_clip(spool)
    with FlakyServer() as server:
        assert uploader(spool, server.url, token_file=token_file).drain(10)
    assert server.seen[0].headers["Authorization"] == "Bearer cred-token-9"


def test_unreadable_token_file_is_named_and_the_clip_waits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    add_clip(spool)
    missing = tmp_path / "missing"
    with FlakyServer() as server:
        up = uploader(spool, server.url, token_file=str(missing))
        assert not up.drain(0.3)
        assert server.seen == [] and spool.head() is not None
        assert f"cannot read upload token file {missing}" in caplog.text
        missing.write_text("now-there\n")  # fixed without a restart
        missing.chmod(0o600)
        assert up.drain(5)
    assert server.seen[-1].headers["Authorization"] == "Bearer now-there"


def test_a_rotated_token_is_picked_up_after_a_401(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    token = tmp_path / "token"
    token.write_text("old-token")
    token.chmod(0o600)
    with FlakyServer([401]) as server:
        up = uploader(spool, server.url, token_file=str(token))
        token.write_text("new-token")
        assert up.drain(10)
    assert [s.headers["Authorization"] for s in server.seen] == ["Bearer old-token", "Bearer new-token"]



def test_detection_to_delivery_is_not_measured_across_a_clock_that_synchronised_since_the_stamp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip stamped 400 days behind before NTP synced: the difference to the corrected clock is the
    step, not a delay, and would swamp the histogram."""
    m = Metrics()
    spool = Spool(spool_config(tmp_path))
    db = sqlite3.connect(tmp_path / "queue.sqlite3", isolation_level=None)  # what an older clip's row holds
    for stamped_synced in (False, True):
        event_id = add_clip(spool, size=1000)[0]
        meta = json.loads(db.execute("SELECT metadata FROM queue WHERE event_id=?", (event_id,)).fetchone()[0])
        meta.update(detected_at="2025-10-27T08:00:00.000Z", clock={"synchronized": stamped_synced})
        db.execute("UPDATE queue SET metadata=? WHERE event_id=?", (json.dumps(meta), event_id))
    monkeypatch.setenv("EDGE_AGENT_CLOCK_SYNCED", "1")
    with FlakyServer() as server:
        assert Uploader(spool, fast_upload(server.url), m, __version__).drain(10)
    count, seconds = observations(m, "edge_agent_detection_to_delivery_seconds")
    assert count == 1 and seconds > 30 * 86_400  # only the clip stamped on a synchronised clock


def test_a_spool_disk_fault_after_a_delivery_is_one_line_and_the_clip_goes_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The server stored the clip and the spool's disk then refuses the delete (an I/O error, a full log): one
    warning line with its cause, no traceback, and the clip is sent again under its key (the server answers
    it as a duplicate), rather than an 'unexpected error' or a lost delivery."""
    spool = Spool(spool_config(tmp_path / "spool"))
    event_id = add_clip(spool)[0]
    real = spool.mark_delivered
    refused: list[str] = []

    def disk_fault_once(eid: str) -> None:
        if not refused:
            refused.append(eid)
            raise sqlite3.OperationalError("disk I/O error")
        real(eid)

    monkeypatch.setattr(spool, "mark_delivered", disk_fault_once)
    caplog.set_level("INFO", logger="edge_agent")
    with FlakyServer() as server:
        assert uploader(spool, server.url).drain(10)
    assert refused == [event_id] and spool.entries() == []
    assert [s.headers["Idempotency-Key"] for s in server.seen] == [event_id, event_id]
    faults = [r for r in caplog.records if "disk I/O error" in r.getMessage()]
    assert len(faults) == 1 and faults[0].exc_info is None, [r.getMessage() for r in faults]
    assert f"clip={event_id}" in faults[0].getMessage() and "the spool's disk" in faults[0].getMessage()
