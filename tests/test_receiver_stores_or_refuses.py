"""A real receiver acknowledges only what it stored: a 201 for a whole body whose video is the one its
metadata describes, on disk before the reply leaves; a 4xx with a reason a sender acts on for anything
else, with nothing of the request left behind. And the agent, through a link that cuts its body short,
keeps its clip until the receiver has all of it."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from edge_agent import __version__
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import Uploader
from edge_agent.metrics import Metrics
from tests.flaky_server import FlakyServer
from tests.receiver_fixture import ReceiverProcess, free_port
from tests.spool_helpers import add_clip, fast_upload, small_filesystem, spool_config

BOUNDARY = b"cut-test-boundary"


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    extra = b"Content-Type: video/mp4\r\n" if filename else b""
    return (b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n" + extra + b"\r\n"
            + value + b"\r\n")


def clip_request(key: str, video: bytes, cid: str | None = "CID-CUT") -> tuple[dict[str, Any], bytes]:
    """The agent's request for a clip of `video` under `key` (metadata with its size and sha256), whole."""
    meta = {"event_id": key, "cid": cid, "device_id": "cam-1",
            "clip": {"size_bytes": len(video), "sha256": hashlib.sha256(video).hexdigest()}}
    body = (part("cid", cid.encode()) if cid else b"") + part("metadata", json.dumps(meta).encode())
    return meta, body + part("video", video, f"{key}.mp4") + b"--" + BOUNDARY + b"--\r\n"


def raw_post(port: int, path: str, body: bytes, key: str, send_all: bool = True) -> tuple[int, dict[str, Any]]:
    """POST `body` with a Content-Length that matches it, so the HTTP layer sees a complete request."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: {key}\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        return reply.status, json.loads(reply.read() or b"{}")


def stored(r: ReceiverProcess) -> list[Path]:
    """Every file a request could have left: videos, bodies being received, LDO objects."""
    return [p for d in ("videos", "incoming", "ldos") if (r.data_dir / d).exists()
            for p in (r.data_dir / d).rglob("*") if p.is_file()]


def wait_for_log(r: ReceiverProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in r.log.read_text():
        assert time.monotonic() < deadline, f"receiver never logged {text!r}"
        time.sleep(0.02)


def cut(body: bytes, where: str) -> bytes:
    video_at = body.index(b'name="video"')
    data_at = body.index(b"\r\n\r\n", video_at) + 4
    if where == "inside_video":
        return body[:data_at + 100]  # 100 of 40,000 bytes, as the edge's proxy cut it
    if where == "before_video":
        return body[:video_at - len(b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; ")]
    return body[:body.rindex(b"--" + BOUNDARY + b"--")]  # the whole video, no closing boundary


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/cid", "/ingest/ldo"])
def test_a_body_cut_off_before_its_closing_boundary_is_400_and_stores_nothing(
        receiver: ReceiverProcess, path: str) -> None:
    key, video = str(uuid.uuid4()), os.urandom(40_000)
    meta, whole = clip_request(key, video, cid="CID-CUT" if path == "/cid" else None)
    for where in ("inside_video", "before_video", "no_closing_boundary"):
        status, reply = raw_post(receiver.port, path, cut(whole, where), key)
        assert (status, reply.get("reason")) == (400, "incomplete_body"), (where, status, reply)
        assert "closing boundary" in reply["detail"]
    # a client that goes away inside the video: nobody to answer, nothing kept
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: {key}\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
                     f"Content-Length: {len(whole)}\r\n\r\n".encode() + cut(whole, "inside_video"))
    wait_for_log(receiver, "client went away mid-body")
    assert stored(receiver) == [] and receiver.events() == [] and receiver.ldos() == []
    # the same key sent whole is stored whole: a refusal recorded nothing under it
    status, reply = raw_post(receiver.port, path, whole, key)
    assert status == 201 and reply["sha256"] == meta["clip"]["sha256"] and reply["size_bytes"] == 40_000
    (video_file,) = [p for p in stored(receiver) if p.suffix == ".mp4"]
    assert video_file.read_bytes() == video


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/cid", "/ingest/ldo"])
def test_a_video_that_is_not_the_one_its_metadata_describes_is_422_and_stores_nothing(
        receiver: ReceiverProcess, path: str) -> None:
    key, video = str(uuid.uuid4()), os.urandom(40_000)
    meta, _ = clip_request(key, video)
    fields = {"metadata": json.dumps(meta)} | ({"cid": "CID-CUT"} if path == "/cid" else {})
    cases = {"other bytes": video[:-1] + bytes([video[-1] ^ 1]), "fewer bytes": video[:-1], "no video": None}
    for case, sent in cases.items():
        r = requests.post(receiver.url + path, data=fields, headers={"Idempotency-Key": key}, timeout=10,
                          files={"video": (f"{key}.mp4", sent, "video/mp4")} if sent is not None else None)
        assert (r.status_code, r.json().get("reason")) == (422, "video_mismatch"), (case, r.text)
    assert stored(receiver) == [] and receiver.events() == [] and receiver.ldos() == []
    ok = requests.post(receiver.url + path, data=fields, headers={"Idempotency-Key": key}, timeout=10,
                       files={"video": (f"{key}.mp4", video, "video/mp4")})
    assert ok.status_code == 201, ok.text


@pytest.mark.slow
def test_every_2xx_echoes_the_sha256_it_stored(receiver: ReceiverProcess) -> None:
    video = os.urandom(5000)
    sha = hashlib.sha256(video).hexdigest()
    for path, fields in (("/cid", {"cid": "CID-ECHO"}), ("/ingest/ldo", {})):
        key = str(uuid.uuid4())
        with_video = requests.post(receiver.url + path, data={**fields, "metadata": json.dumps({"event_id": key})},
                                   files={"video": ("a.mp4", video, "video/mp4")}, headers={"Idempotency-Key": key},
                                   timeout=10)
        assert with_video.status_code == 201 and with_video.json()["sha256"] == sha, (path, with_video.text)
        key = str(uuid.uuid4())
        without = requests.post(receiver.url + path, headers={"Idempotency-Key": key}, timeout=10,
                                data={**fields, "metadata": json.dumps({"event_id": key, "clip": {"error": "x"}})})
        assert without.status_code == 201 and without.json()["sha256"] is None, (path, without.text)


@pytest.mark.slow
def test_a_full_disk_is_503_and_leaves_no_part_file(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "4m") as small, ReceiverProcess(small / "receiver") as r:
        big = os.urandom(6_000_000)
        key = str(uuid.uuid4())
        for path in ("/cid", "/ingest/ldo"):
            resp = requests.post(r.url + path, data={"cid": "CID-FULL", "metadata": json.dumps({"event_id": key})},
                                 files={"video": ("a.mp4", big, "video/mp4")}, headers={"Idempotency-Key": key},
                                 timeout=30)
            assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit(), (path, resp.text)
        assert stored(r) == [] and r.events() == [] and r.ldos() == []
        ok = requests.post(r.cid_url, data={"cid": "CID-FULL", "metadata": json.dumps({"event_id": key})},
                           files={"video": ("a.mp4", big[:1000], "video/mp4")}, headers={"Idempotency-Key": key},
                           timeout=10)
        assert ok.status_code == 201, ok.text
        assert "Traceback" not in r.log.read_text()


@pytest.mark.slow
def test_cid_is_not_acknowledged_until_data_ingestion_stored_the_same_bytes(tmp_path: Path) -> None:
    video = os.urandom(20_000)
    sha = hashlib.sha256(video).hexdigest()
    stored_right = (201, {}, json.dumps({"id": "ldo_1", "status": "ingested", "sha256": sha}).encode())
    with FlakyServer([("receipt", None), ("receipt", "0" * 64), (500, {}, b'{"detail": "down"}'),
                      stored_right]) as ingest:
        env = {"USE_DATA_INGESTION": "true", "DATA_INGESTION_URL": ingest.url.removesuffix("/cid")}
        with ReceiverProcess(tmp_path / "edge", env=env) as edge:
            key = str(uuid.uuid4())
            meta, _ = clip_request(key, video)
            for _ in range(3):
                r = requests.post(edge.cid_url, data={"cid": "CID-CUT", "metadata": json.dumps(meta)},
                                  files={"video": (f"{key}.mp4", video, "video/mp4")},
                                  headers={"Idempotency-Key": key}, timeout=20)
                assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
                assert stored(edge) == [] and edge.events() == []
            r = requests.post(edge.cid_url, data={"cid": "CID-CUT", "metadata": json.dumps(meta)},
                              files={"video": (f"{key}.mp4", video, "video/mp4")},
                              headers={"Idempotency-Key": key}, timeout=20)
            assert r.status_code == 201 and r.json()["ldo_id"] == "ldo_1" and r.json()["sha256"] == sha
            (ev,) = edge.events()
            assert (edge.data_dir / ev["video_file"]).read_bytes() == video
    assert [s.video_sha256 for s in ingest.seen] == [sha] * 4


# --- durable before the reply ---------------------------------------------------------------------


def _strace_events(log: Path) -> list[tuple[str, str]]:
    """(syscall, its text) in the order the calls returned, from `strace -f -y` output (a call another
    thread interrupted is joined with its `resumed` line)."""
    pending: dict[str, str] = {}
    done: list[tuple[str, str]] = []
    for line in log.read_text(errors="replace").splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.lstrip()  # strace pads short pids
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")]
            continue
        m = re.match(r"<\.\.\. (\w+) resumed>(.*)", rest)
        if m:
            rest = pending.pop(pid, m.group(1) + "(") + m.group(2)
        name = rest.split("(", 1)[0]
        done.append((name, rest))
    return done


def _first(events: list[tuple[str, str]], after: int, pred: Any, what: str) -> int:
    for i in range(after, len(events)):
        if pred(*events[i]):
            return i
    raise AssertionError(f"no {what} after call {after}: {events[after:after + 40]}")


@pytest.mark.slow
def test_a_201_leaves_only_once_the_video_and_its_row_are_on_disk(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    data = tmp_path / "receiver"
    port = free_port()
    log = tmp_path / "strace.log"
    proc = subprocess.Popen([strace, "-f", "-qq", "-y", "-o", str(log), "-e",
                             "trace=fsync,fdatasync,rename,renameat,renameat2,sendto,write",
                             sys.executable, "-m", "edge_agent.receiver", "--port", str(port), "--data-dir", str(data),
                             "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.skip(f"strace cannot trace here: {proc.stderr.read().decode()[-300:]}")  # type: ignore[union-attr]
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, "receiver under strace did not come up"
                time.sleep(0.1)
        video = os.urandom(50_000)
        for path, fields in (("/cid", {"cid": "CID-DURABLE"}), ("/ingest/ldo", {})):
            key = str(uuid.uuid4())
            r = requests.post(f"http://127.0.0.1:{port}{path}", data={**fields, "metadata": json.dumps(
                {"event_id": key, "device_id": "cam-1"})}, files={"video": ("a.mp4", video, "video/mp4")},
                headers={"Idempotency-Key": key}, timeout=30)
            assert r.status_code == 201, r.text
    finally:
        receiver_pid = int((Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split() or ["0"])[0]) \
            if proc.poll() is None else 0
        if receiver_pid:
            os.kill(receiver_pid, signal.SIGTERM)
        proc.wait(30)
    ev = _strace_events(log)
    videos, index, ldos = f"{data}/videos", f"{data}/receiver.sqlite3-wal", f"{data}/ldos/"

    def synced(target: str) -> Any:
        return lambda name, text: name in ("fsync", "fdatasync") and f"<{target}>" in text

    def replied(name: str, text: str) -> bool:
        return name in ("sendto", "write") and '"HTTP/1.1 201 ' in text

    # POST /cid: the part file fsynced, renamed into videos/, videos/ fsynced, the row's commit synced: then 201
    fsync_part = _first(ev, 0, lambda n, t: n in ("fsync", "fdatasync") and "/incoming/" in t and ".part>" in t,
                        "fsync of the received part file")
    renamed = _first(ev, fsync_part, lambda n, t: n.startswith("rename") and "/incoming/" in t and videos in t,
                     "rename into videos/")
    dir_synced = _first(ev, renamed, synced(videos), "fsync of videos/")
    committed = _first(ev, dir_synced, synced(index), "sync of the receiver's WAL")
    reply = _first(ev, 0, replied, "201 reply")
    assert fsync_part < renamed < dir_synced < committed < reply, ev[fsync_part:reply + 1]
    # POST /ingest/ldo: the video object fsynced, renamed, its folder fsynced; the index commit synced: then 201
    second = _first(ev, reply + 1, replied, "second 201 reply")
    obj_renamed = _first(ev, reply, lambda n, t: n.startswith("rename") and ldos in t and t.count(".mp4") >= 2,
                         "rename of the video object")
    obj_folder = re.search(r'"(' + re.escape(ldos) + r'[^"]*)/[^/"]+\.mp4"\)', ev[obj_renamed][1])
    assert obj_folder is not None, ev[obj_renamed]
    folder_synced = _first(ev, obj_renamed, synced(obj_folder.group(1)), "fsync of the object's folder")
    index_synced = _first(ev, folder_synced, synced(f"{data}/ldo-index.sqlite3-wal"), "sync of the index's WAL")
    assert obj_renamed < folder_synced < index_synced < second, ev[reply:second + 1]


# --- the agent through a link that cuts its body short ----------------------------------------------


@contextlib.contextmanager
def cutting_proxy(target_port: int) -> Iterator[str]:
    """A proxy to the receiver whose first POST has its video cut to 100 bytes and its closing boundary
    dropped, Content-Length made to match (a proxy that lost the end of the body): the request the
    receiver once acknowledged with 201 and size_bytes 0. Yields the /cid URL to post to."""
    cuts = [1]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_a: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if cuts[0]:
                cuts[0] -= 1
                body = body[:body.index(b"\r\n\r\n", body.index(b'name="video"')) + 4 + 100]
            headers = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()
                              if k.lower() not in ("content-length", "connection"))
            with socket.create_connection(("127.0.0.1", target_port), timeout=30) as upstream:
                upstream.sendall(f"POST {self.path} HTTP/1.1\r\n{headers}Content-Length: {len(body)}\r\n"
                                 "Connection: close\r\n\r\n".encode() + body)
                while chunk := upstream.recv(65536):  # the receiver's reply, as it sent it, to its end
                    self.wfile.write(chunk)
            self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/cid"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_a_clip_cut_short_on_the_way_stays_on_the_device_until_the_receiver_has_it_whole(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    event_id, cid, sha = add_clip(spool, size=40_000)
    results: list[str] = []
    with cutting_proxy(receiver.port) as url:
        up = Uploader(spool, fast_upload(url), Metrics(), __version__,
                      on_result=lambda _e, _c, r: results.append(r))
        assert up.drain(20)
    assert results == ["retry", "delivered"]
    (ev,) = receiver.events()
    assert ev["cid"] == cid and ev["event_id"] == event_id and ev["sha256"] == sha and ev["size_bytes"] == 40_000
    assert hashlib.sha256((receiver.data_dir / ev["video_file"]).read_bytes()).hexdigest() == sha
    assert spool.head() is None and not (tmp_path / "spool" / "quarantine" / f"{event_id}.mp4").exists()
