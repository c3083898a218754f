"""Upload failures read in plain words, cause first, from real sockets: a closed port, a name that
does not resolve, a TLS server with a self-signed certificate, a server that never answers, one whose
listen queue is full, and a server refusing a clip as too large."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from edge_agent import __version__
from edge_agent.delivery.errors import describe_error, describe_reply
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import Uploader
from edge_agent.metrics import Metrics
from tests.receiver_fixture import ReceiverProcess, free_port
from tests.spool_helpers import add_clip, fast_upload, spool_config


def post_error(url: str, timeout: float | tuple[float, float] = 2.0, **kw: object) -> BaseException:
    try:
        requests.post(url, data=b"x", timeout=timeout, **kw)  # type: ignore[arg-type]
    except requests.RequestException as exc:
        return exc
    raise AssertionError(f"POST {url} succeeded")


def test_a_closed_port_is_connection_refused() -> None:
    port = free_port()  # nothing listens on it
    url = f"http://127.0.0.1:{port}/cid"
    want = f"connection refused by 127.0.0.1:{port} (is the edge server running?)"
    assert describe_error(post_error(url), url) == want
    assert describe_error(post_error(url)) == want  # the address from the exception itself


def test_a_name_that_does_not_resolve_is_named() -> None:
    url = "http://edge-server.invalid:8000/cid"  # .invalid never resolves (RFC 6761)
    words = describe_error(post_error(url), url)
    assert words.startswith("name edge-server.invalid does not resolve"), words


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A TLS server on 127.0.0.1 whose certificate signs itself (as tests/test_tls.py makes them)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("selfsigned")
    (d / "san.cnf").write_text("[req]\ndistinguished_name=dn\n[dn]\n[ext]\nsubjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "2", "-subj", "/CN=edge-server", "-config", "san.cnf", "-extensions", "ext"],
                   cwd=d, check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "c.pem", d / "k.pem")
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate: what the test wants

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def test_a_self_signed_certificate_is_not_trusted(self_signed: int) -> None:
    url = f"https://127.0.0.1:{self_signed}/cid"
    words = describe_error(post_error(url), url)
    assert words.startswith("TLS: certificate not trusted (self-signed certificate)"), words
    assert "upload.ca_file" in words


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """Accepts connections (the kernel does, from the listen queue) and never says a word."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=8)
    yield srv
    srv.close()


def test_a_server_that_never_answers_times_out_in_words(silent_server: socket.socket) -> None:
    port = silent_server.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cid"
    words = describe_error(post_error(url, timeout=(2.0, 0.5)), url)
    assert words == f"timed out after 0.5 s waiting for 127.0.0.1:{port} to answer"


def test_a_full_listen_queue_is_a_connect_timeout() -> None:
    """A server whose accept queue is full drops new SYNs: the client's connect times out."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the queue (Linux keeps backlog + 1)
            c = socket.socket()
            c.settimeout(0.3)
            try:
                c.connect(("127.0.0.1", port))
            except OSError:
                c.close()
                break
            fillers.append(c)
        url = f"http://127.0.0.1:{port}/cid"
        words = describe_error(post_error(url, timeout=(0.4, 0.4)), url)
        assert words.startswith(f"timed out after 0.4 s connecting to 127.0.0.1:{port}"), words
    finally:
        for c in fillers:
            c.close()
        srv.close()


def test_the_uploader_keeps_the_cause_in_the_log_and_the_spool(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """What the issue saw: `error=ConnectionError: HTTPConnectionPool(... [` with the cause cut off."""
    port = free_port()
    spool = Spool(spool_config(tmp_path / "spool"))
    add_clip(spool)
    up = Uploader(spool, fast_upload(f"http://127.0.0.1:{port}/cid"), Metrics(), __version__)
    head = spool.head()
    assert head is not None
    with caplog.at_level("WARNING"):
        assert up.attempt(head) == "retry"
    want = f"connection refused by 127.0.0.1:{port} (is the edge server running?)"
    assert spool.status().last_error == want
    assert f"error={want} retry_in_s=" in caplog.text and "HTTPConnectionPool" not in caplog.text
    spool.close()


@pytest.mark.slow
def test_a_clip_too_large_for_the_real_receiver_says_so(tmp_path: Path) -> None:
    with ReceiverProcess(tmp_path / "receiver", max_bytes=20_000) as receiver:
        spool = Spool(spool_config(tmp_path / "spool"))
        add_clip(spool, size=60_000)
        up = Uploader(spool, fast_upload(receiver.cid_url), Metrics(), __version__)
        head = spool.head()
        assert head is not None
        result = up.attempt(head)
        st = spool.status()
        spool.close()
    assert result == "quarantined", st
    assert st.quarantine_reason == "HTTP 413 from the server: clip too large (limit 20000 bytes, this clip 60000 bytes)"


def test_server_replies_are_unwrapped_and_kept_on_one_line() -> None:
    assert describe_reply(503, '{"detail": "storage unavailable"}') == "HTTP 503 from the server: storage unavailable"
    assert describe_reply(502, "") == "HTTP 502 from the server"
    assert describe_reply(400, "bad\nrequest\x1b[31m") == "HTTP 400 from the server: bad request\\x1b[31m"
    assert describe_reply(413, "too big", 3_000_000) == ("HTTP 413 from the server: clip too large (the server's "
                                                         "limit, this clip 3.0 MB): too big")
