"""TLS is verified by default, a private CA is trusted through upload.ca_file, and a client
certificate answers a server that demands one (mutual TLS). Certificates are made here by openssl."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import Uploader
from edge_agent.metrics import Metrics
from tests.flaky_server import FlakyServer
from tests.spool_helpers import add_clip, fast_upload, spool_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def sh(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
       "-days", "2", "-subj", "/CN=test factory CA", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
           "-subj", f"/CN={name}", cwd=d)
        sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
           "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)
    return d


def server_context(pki: Path, require_client: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def attempt(tmp_path: Path, server: FlakyServer, **upload: object) -> str:
    spool = Spool(spool_config(tmp_path / "spool"))
    entry_id, _, _ = add_clip(spool)
    up = Uploader(spool, fast_upload(server.url, **upload), Metrics(), __version__)
    head = spool.head()
    assert head is not None and head.event_id == entry_id
    return up.attempt(head)


@pytest.mark.slow
def test_unknown_ca_is_refused_by_default(pki: Path, tmp_path: Path) -> None:
    with FlakyServer(tls=server_context(pki, False)) as server:
        assert attempt(tmp_path, server) == "retry"
        assert server.seen == []


def test_private_ca_from_ca_file_is_trusted(pki: Path, tmp_path: Path) -> None:
    with FlakyServer(tls=server_context(pki, False)) as server:
        assert attempt(tmp_path, server, ca_file=str(pki / "ca.pem")) == "delivered"


def test_mutual_tls_with_a_client_certificate(pki: Path, tmp_path: Path) -> None:
    with FlakyServer(tls=server_context(pki, True)) as server:
        assert attempt(tmp_path / "a", server, ca_file=str(pki / "ca.pem")) == "retry"  # no client cert
        assert attempt(tmp_path / "b", server, ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                       key_file=str(pki / "client.key")) == "delivered"
