"""Delivery against a real misbehaving HTTP server on 127.0.0.1: every retry class, quarantine of
hopeless replies, a stable idempotency key, a fresh full body on every attempt, order kept, and a
wall-clock jump that changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.metrics import Metrics
from edge_agent.spool import Spool
from edge_agent.uploader import Uploader
from tests.flaky_server import FlakyServer
from tests.spool_helpers import add_clip, fast_upload, spool_config


def drain(spool: Spool, server: FlakyServer, timeout: float = 20.0, **upload: object) -> tuple[Uploader, Metrics]:
    m = Metrics()
    up = Uploader(spool, fast_upload(server.url, **upload), m, __version__)
    assert up.drain(timeout), "spool did not drain"
    return up, m


def test_request_carries_the_contract_fields_and_headers(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    event_id, cid, sha = add_clip(spool)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with FlakyServer() as server:
        drain(spool, server, token_file=str(token))
    (seen,) = server.seen
    assert seen.key == event_id
    assert seen.headers["User-Agent"] == f"edge-agent/{__version__}"
    assert seen.headers["Authorization"] == "Bearer s3cret-token"
    assert seen.fields["cid"].decode() == cid
    assert b'"event_id": "' + event_id.encode() in seen.fields["metadata"]
    assert seen.filename == f"{event_id}.mp4"
    assert seen.video_sha256 == sha


@pytest.mark.parametrize("script", [
    [500, (503, {"Retry-After": "1"}), 429, 408],
    ["reset_mid_body", "reset_after_body"],
    ["stall"],
    [401, 403],
], ids=["5xx-429-408", "resets", "stalled-read", "auth"])
def test_retryable_failures_end_in_delivery_with_one_key(tmp_path: Path, script: list[object]) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, _, sha = add_clip(spool)
    with FlakyServer(script, stall_s=2.0) as server:
        started = time.monotonic()
        _, m = drain(spool, server, read_timeout_s=0.5, backoff_cap_s=2.0)
    assert {s.key for s in server.seen} == {event_id}
    assert len(server.seen) == len(script) + 1
    assert all(s.video_sha256 == sha for s in server.seen if s.complete)  # a full fresh body each time
    assert m.get("edge_agent_uploads_total", result="retry") == len(script)
    if (503, {"Retry-After": "1"}) in script:
        i = script.index((503, {"Retry-After": "1"}))
        assert server.seen[i + 1].at - server.seen[i].at >= 0.95  # Retry-After honoured
    assert spool.head() is None and time.monotonic() - started < 15


def test_reset_after_body_is_deduplicated_as_409(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    results: list[str] = []
    with FlakyServer(["reset_after_body"]) as server:
        up = Uploader(spool, fast_upload(server.url), Metrics(), __version__,
                      on_result=lambda _e, _c, r: results.append(r))
        assert up.drain(10)
    assert results == ["retry", "duplicate"]


@pytest.mark.parametrize("status", [413, 422, 400])
def test_hopeless_replies_quarantine_and_the_queue_moves_on(tmp_path: Path, status: int,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(spool_config(tmp_path))
    bad, _, _ = add_clip(spool)
    good, _, _ = add_clip(spool)
    with FlakyServer([status]) as server:
        _, m = drain(spool, server)
    assert [s.key for s in server.seen] == [bad, good]
    assert (tmp_path / "quarantine" / f"{bad}.mp4").exists()
    assert f"HTTP {status}" in (tmp_path / "quarantine" / f"{bad}.reason").read_text()
    assert m.get("edge_agent_uploads_total", result="quarantined") == 1
    assert any(f"HTTP {status}" in r.getMessage() and bad in r.getMessage() for r in caplog.records)


def test_order_is_kept_while_the_head_backs_off(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    ids = [add_clip(spool)[0] for _ in range(4)]
    with FlakyServer([503, 503, 500]) as server:
        drain(spool, server)
    delivered = [s.key for s in server.seen if s.action == "ok"]
    assert delivered == ids
    assert [s.key for s in server.seen[:4]] == [ids[0]] * 4


def test_wall_clock_jump_during_backoff_changes_neither_order_nor_keys(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(spool_config(tmp_path))
    ids = [add_clip(spool)[0] for _ in range(2)]
    with FlakyServer([(503, {"Retry-After": "1"})]) as server:
        m = Metrics()
        up = Uploader(spool, fast_upload(server.url), m, __version__)
        up.start()
        deadline = time.monotonic() + 5
        while not server.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 86_400)  # NTP jumps a day ahead
        started = time.monotonic()
        assert up.drain(10)
        up.stop()
    assert [s.key for s in server.seen] == [ids[0], ids[0], ids[1]]
    assert 0.5 <= time.monotonic() - started < 5  # waited out Retry-After on the monotonic clock


def test_clip_changed_on_disk_is_quarantined_not_sent(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, _, _ = add_clip(spool)
    (tmp_path / "clips" / f"{event_id}.mp4").write_bytes(b"short")
    with FlakyServer() as server:
        drain(spool, server)
    assert server.seen == []
    assert (tmp_path / "quarantine" / f"{event_id}.mp4").exists()


def test_no_secret_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    token = tmp_path / "token"
    token.write_text("topsecret-123")
    with FlakyServer([401]) as server:
        drain(spool, server, token_file=str(token))
    assert "topsecret-123" not in caplog.text


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
        drain(spool, server, token_file=token_file)
    assert server.seen[0].headers["Authorization"] == "Bearer cred-token-9"


def test_unreadable_token_file_is_named_and_the_clip_waits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    add_clip(spool)
    with FlakyServer() as server:
        up = Uploader(spool, fast_upload(server.url, token_file=str(tmp_path / "missing")), Metrics(), __version__)
        assert not up.drain(0.5)
    assert server.seen == [] and spool.head() is not None
    assert f"cannot read upload token file {tmp_path / 'missing'}" in caplog.text
