"""What a real receiver refuses, and that refusing costs it nothing: malformed metadata before any
byte is stored, refused bodies not read, half-sent headers and trickled bodies timed out, oversized
idempotency keys, and a lock table that does not grow with every key ever seen."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.receiver_fixture import ReceiverProcess
from tests.trickle_client import trickle


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """A receiver that gives up on an incomplete request header after 1 s."""
    r = ReceiverProcess(tmp_path / "receiver", max_bytes=1 << 20)
    r.extra_args = ["--header-timeout", "1"]
    with r:
        yield r


def stored_files(r: ReceiverProcess) -> list[Path]:
    return [p for d in ("videos", "ldos") if (r.data_dir / d).exists() for p in (r.data_dir / d).rglob("*")
            if p.is_file()]


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response: {buf!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the server has closed (EOF or reset) within `timeout`; False if it is still open."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("clip", ["just a string", ["a", "list"], {"sha256": 12}, {"size_bytes": "many"}])
@pytest.mark.slow
def test_malformed_metadata_is_refused_before_anything_is_stored(quick: ReceiverProcess, clip: object) -> None:
    key = str(uuid.uuid4())
    meta = json.dumps({"event_id": key, "cid": "CID-1", "clip": clip})
    for _ in range(3):  # the edge retries with the same key; no retry may leave a file behind
        r = requests.post(quick.cid_url, data={"cid": "CID-1", "metadata": meta},
                          files={"video": ("v.mp4", b"v" * 4000, "video/mp4")}, headers={"Idempotency-Key": key},
                          timeout=10)
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith("metadata.clip")
        ldo = requests.post(f"{quick.url}/ingest/ldo", data={"metadata": meta},
                            files={"video": ("v.mp4", b"v" * 4000, "video/mp4")}, timeout=10)
        assert ldo.status_code == 422, ldo.text
    assert stored_files(quick) == []
    assert quick.events() == [] and quick.ldos() == []


@pytest.mark.slow
def test_other_malformed_fields_name_the_field(quick: ReceiverProcess) -> None:
    for meta, field in (({"detected_at": "yesterday"}, "metadata.detected_at"),
                        ({"device_id": ["x"]}, "metadata.device_id"),
                        ({"detection": {"polygon": "square"}}, "metadata.detection.polygon"),
                        ({"event_id": "e" * 300}, "metadata.event_id")):
        r = requests.post(quick.cid_url, data={"cid": "CID-1", "metadata": json.dumps(meta)},
                          files={"video": ("v.mp4", b"v", "video/mp4")}, timeout=10)
        assert r.status_code == 422 and r.json()["detail"].startswith(field), (meta, r.text)
    assert stored_files(quick) == []


@pytest.mark.parametrize("length_header", ["Content-Length: 10000000000", "Transfer-Encoding: chunked"])
@pytest.mark.slow
def test_a_refused_body_is_not_read_the_connection_is_closed(quick: ReceiverProcess, length_header: str) -> None:
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(f"POST /cid HTTP/1.1\r\nHost: x\r\n{length_header}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\n\r\n".encode())
        status, headers, _ = read_response(sock)
        assert status == (413 if "Length" in length_header else 411)
        assert headers.get("connection") == "close"
        assert closed_by_peer(sock, 3)
        sent = 0
        block = b"\0" * (1 << 20)
        if "chunked" in length_header:  # well-formed chunks, so only the refusal can stop them
            block = b"%x\r\n" % len(block) + block + b"\r\n"
        with pytest.raises(OSError):  # broken pipe or reset: nobody reads the rest of the body
            while sent < 256 << 20:
                sock.sendall(block)
                sent += len(block)
    assert sent < 64 << 20


@pytest.mark.slow
def test_half_a_request_header_is_disconnected_after_the_timeout(quick: ReceiverProcess) -> None:
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        t0 = time.monotonic()
        sock.sendall(b"POST /cid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        assert closed_by_peer(sock, 5), "still connected 5 s after half a header"
        assert time.monotonic() - t0 < 3
    # also on a keep-alive connection, after a first complete request
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        t0 = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert closed_by_peer(sock, 8), "still connected 8 s after half a second header"
        assert time.monotonic() - t0 < 3
    # and a connection that sends nothing at all
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        assert closed_by_peer(sock, 5)
    assert requests.get(f"{quick.url}/healthz", timeout=5).ok


@pytest.mark.slow
def test_trickled_bodies_get_408_and_are_closed_while_a_normal_upload_is_stored(tmp_path: Path) -> None:
    r = ReceiverProcess(tmp_path / "receiver")
    r.extra_args = ["--body-timeout", "2"]
    n = 20
    ready = threading.Barrier(n + 1)
    with r, ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(trickle, r.port, 10_000_000, 0.2, 30, ready) for _ in range(n)]
        ready.wait(30)  # every trickler has sent its headers and the start of its video
        video = b"n" * 1_000_000
        key = str(uuid.uuid4())
        meta = {"event_id": key, "cid": "CID-NORMAL", "clip": {"sha256": hashlib.sha256(video).hexdigest()}}
        ok = requests.post(r.cid_url, data={"cid": "CID-NORMAL", "metadata": json.dumps(meta)},
                           files={"video": (f"{key}.mp4", video, "video/mp4")}, headers={"Idempotency-Key": key},
                           timeout=30)
        results = [f.result() for f in futures]
        assert ok.status_code == 201, ok.text
        assert [(t.status, t.reason) for t in results] == [(408, "body_too_slow")] * n
        # cut once 2 s are spent (a byte every 0.2 s earns nothing), not later; slack for a loaded machine
        assert all(t.closed_after_s is not None and 1.9 <= t.closed_after_s <= 6 for t in results), results
        (ev,) = r.events()
        assert ev["cid"] == "CID-NORMAL" and (r.data_dir / ev["video_file"]).read_bytes() == video
        assert list((r.data_dir / "incoming").iterdir()) == []  # no trickler left a part file


@pytest.mark.slow
def test_a_reply_sent_before_its_body_has_arrived_closes_the_connection(tmp_path: Path) -> None:
    r = ReceiverProcess(tmp_path / "receiver")
    r.extra_args = ["--body-timeout", "60"]  # so the body's own deadline cannot be what closes it
    with r:
        for path in ("/healthz", "/nowhere"):  # answered (405, 404) without reading the body being trickled
            t = trickle(r.port, 10_000_000, 0.2, 20, path=path)
            assert t.status in (404, 405) and t.closed_after_s is not None and t.closed_after_s < 5, (path, t)
        assert requests.get(f"{r.url}/healthz", timeout=5).ok


@pytest.mark.slow
def test_oversized_idempotency_keys_are_refused(quick: ReceiverProcess) -> None:
    long_key = "k" * 16_000
    r = requests.post(quick.cid_url, data={"cid": "CID-1", "metadata": "{}"},
                      files={"video": ("v.mp4", b"v" * 100, "video/mp4")}, headers={"Idempotency-Key": long_key},
                      timeout=10)
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["detail"] and "200" in r.json()["detail"]
    r = requests.post(f"{quick.url}/ingest/ldo", data={"metadata": "{}"}, headers={"Idempotency-Key": "k" * 201},
                      files={"video": ("v.mp4", b"v" * 100, "video/mp4")}, timeout=10)
    assert r.status_code == 400
    assert stored_files(quick) == [] and quick.events() == [] and quick.ldos() == []
    ok = requests.post(quick.cid_url, data={"cid": "CID-1", "metadata": "{}"}, headers={"Idempotency-Key": "k" * 200},
                       timeout=10)
    assert ok.status_code == 201, ok.text


@pytest.mark.slow
def test_the_key_lock_table_empties_once_requests_finish(quick: ReceiverProcess) -> None:
    def post(i: int) -> int:
        key = str(uuid.uuid4()) if i % 3 else "shared-key"
        return requests.post(quick.cid_url, data={"cid": "CID-1", "metadata": "{}"},
                             files={"video": ("v.mp4", b"v" * 1000, "video/mp4")},
                             headers={"Idempotency-Key": key}, timeout=10).status_code

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(post, range(60))) == {201}
    assert len(quick.events()) == 41
    assert requests.get(f"{quick.url}/healthz", timeout=5).json()["locked_keys"] == 0


@pytest.mark.parametrize(("meta", "said"), [
    ('{"event_id": "e", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "over the 65536 byte limit"),
    ('{"event_id": "e", "x": ' + "[" * 5_000 + "]" * 5_000 + "}", "nested deeper than the 32 level limit"),
    ('{"event_id": "e", "x": ' + '{"a": ' * 33 + "1" + "}" * 33 + "}", "nested deeper than the 32 level limit"),
    (json.dumps({"event_id": "e", "note": "x" * 70_000}), "over the 65536 byte limit"),
])
@pytest.mark.slow
def test_metadata_too_deep_or_too_large_is_422_not_a_500(quick: ReceiverProcess, meta: str, said: str) -> None:
    for path, data in (("/cid", {"cid": "CID-1", "metadata": meta}), ("/ingest/ldo", {"metadata": meta})):
        r = requests.post(quick.url + path, data=data, files={"video": ("v.mp4", b"v" * 4000, "video/mp4")},
                          timeout=10)
        assert r.status_code == 422 and said in r.json()["detail"], r.text
    assert stored_files(quick) == [] and quick.events() == []
    assert "Traceback" not in quick.log.read_text()


@pytest.mark.slow
def test_metadata_at_the_limits_is_accepted(quick: ReceiverProcess) -> None:
    # brackets inside strings are text, not nesting; 32 levels is allowed
    meta = {"event_id": "e-ok", "note": "[[[{{{" * 1000, "x": json.loads("[" * 31 + "]" * 31)}
    r = requests.post(quick.cid_url, data={"cid": "CID-1", "metadata": json.dumps(meta)}, timeout=10)
    assert r.status_code == 201, r.text
