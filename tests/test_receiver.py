"""The reference receiver, as a real process on 127.0.0.1: the seed's APIs, clear 4xx for bad
requests, idempotency by key (also under concurrency and across restarts), forwarding to
data-ingestion with 503 + Retry-After when it is down."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.receiver_fixture import ReceiverProcess, free_port


def post(url: str, cid: str | None = "CID-1", meta: object = None, video: bytes | None = b"\0\0\0\x18ftypmp42",
         key: str | None = None) -> requests.Response:
    key = key or str(uuid.uuid4())
    data = {}
    if cid is not None:
        data["cid"] = cid
    if meta is None:
        meta = {"event_id": key, "cid": cid, "clip": {"sha256": hashlib.sha256(video or b"").hexdigest()}}
    data["metadata"] = meta if isinstance(meta, str) else json.dumps(meta)
    files = {"video": (f"{key}.mp4", video, "video/mp4")} if video is not None else None
    return requests.post(url, data=data, files=files, headers={"Idempotency-Key": key}, timeout=10)


@pytest.mark.slow
def test_clip_is_stored_with_its_checksum_verified(receiver: ReceiverProcess) -> None:
    r = post(receiver.cid_url, video=b"x" * 5000)
    assert r.status_code == 201, r.text
    (ev,) = receiver.events()
    assert ev["sha256_ok"] is True and ev["size_bytes"] == 5000
    assert (receiver.data_dir / ev["video_file"]).read_bytes() == b"x" * 5000


@pytest.mark.slow
def test_cid_only_request_is_accepted(receiver: ReceiverProcess) -> None:
    r = post(receiver.cid_url, video=None, meta={"clip": {"error": "no keyframe"}})
    assert r.status_code == 201
    assert receiver.events()[0]["video_file"] is None


@pytest.mark.slow
def test_bad_requests_get_clear_4xx(receiver: ReceiverProcess) -> None:
    assert post(receiver.cid_url, cid=None).status_code == 400
    r = post(receiver.cid_url, meta="{not json")
    assert r.status_code == 422 and "not JSON" in r.json()["detail"]
    assert post(receiver.cid_url, meta="[1, 2]").status_code == 422
    assert receiver.events() == []


@pytest.mark.slow
def test_hostile_cids_are_refused_and_never_become_paths(receiver: ReceiverProcess) -> None:
    for cid in ("../../etc/passwd", "CID-OK\nX-Injected: 1", "A1;rm -rf /", "x" * 500):
        r = post(receiver.cid_url, cid=cid, meta={})
        assert r.status_code == 422, cid
    names = [p.name for p in receiver.data_dir.rglob("*")]
    assert not any("passwd" in n or "rm -rf" in n for n in names)


@pytest.mark.slow
def test_body_over_the_cap_is_413(tmp_path: Path) -> None:
    with ReceiverProcess(tmp_path / "r", max_bytes=10_000) as r:
        resp = post(r.cid_url, video=b"x" * 20_000)
        assert resp.status_code == 413
        assert r.events() == []


@pytest.mark.slow
def test_same_key_gets_the_same_reply_and_one_record(receiver: ReceiverProcess) -> None:
    key = str(uuid.uuid4())
    first = post(receiver.cid_url, key=key)
    second = post(receiver.cid_url, key=key)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers.get("Idempotent-Replay") == "true"
    (ev,) = receiver.events()
    assert ev["requests"] == 2


@pytest.mark.slow
def test_concurrent_posts_with_one_key_make_one_record(receiver: ReceiverProcess) -> None:
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: post(receiver.cid_url, key=key, video=b"v" * 100_000), range(8)))
    assert {r.status_code for r in replies} == {201}
    assert len({json.dumps(r.json(), sort_keys=True) for r in replies}) == 1
    assert len(receiver.events()) == 1


@pytest.mark.slow
def test_idempotency_survives_a_restart(receiver: ReceiverProcess) -> None:
    key = str(uuid.uuid4())
    post(receiver.cid_url, key=key)
    receiver.restart()
    assert post(receiver.cid_url, key=key).headers.get("Idempotent-Replay") == "true"
    assert len(receiver.events()) == 1


@pytest.mark.slow
def test_forwarding_to_data_ingestion_creates_one_ldo(tmp_path: Path) -> None:
    port = free_port()
    env = {"USE_DATA_INGESTION": "true", "DATA_INGESTION_URL": f"http://127.0.0.1:{port}"}  # itself
    with ReceiverProcess(tmp_path / "r", env=env, port=port) as r:
        key = str(uuid.uuid4())
        first = post(r.cid_url, key=key, video=b"y" * 3000)
        assert first.status_code == 201, first.text
        assert first.json()["ldo_id"].startswith("ldo_")
        post(r.cid_url, key=key, video=b"y" * 3000)
        (ldo,) = r.ldos()
        assert ldo["id"] == first.json()["ldo_id"] and ldo["size_bytes"] == 3000 and ldo["status"] == "ingested"


@pytest.mark.slow
def test_ingestion_down_gives_503_with_retry_after_and_a_retry_succeeds(tmp_path: Path) -> None:
    ingest_port = free_port()
    env = {"USE_DATA_INGESTION": "true", "DATA_INGESTION_URL": f"http://127.0.0.1:{ingest_port}"}
    with ReceiverProcess(tmp_path / "edge", env=env) as edge:
        key = str(uuid.uuid4())
        down = post(edge.cid_url, key=key)
        assert down.status_code == 503 and down.headers["Retry-After"].isdigit()
        assert edge.events() == []
        with ReceiverProcess(tmp_path / "ingest", port=ingest_port) as ingest:
            assert post(edge.cid_url, key=key).status_code == 201
            assert len(ingest.ldos()) == 1 and len(edge.events()) == 1


@pytest.mark.slow
def test_ingest_ldo_reply_shape_and_list_pagination(receiver: ReceiverProcess) -> None:
    ids = []
    for i in range(5):
        r = requests.post(f"{receiver.url}/ingest/ldo", data={"metadata": json.dumps({"n": i})},
                          files={"video": ("a.mp4", b"z" * (i + 1), "video/mp4")}, timeout=10)
        assert r.status_code == 201
        body = r.json()
        assert body["status"] == "ingested" and body["size_bytes"] == i + 1
        prefix, hexpart, epoch = body["id"].split("_")
        assert prefix == "ldo" and int(hexpart, 16) >= 0 and epoch.isdigit()
        ids.append(body["id"])
    listing = receiver.ldos()
    assert sorted(x["id"] for x in listing) == sorted(ids)
    newest_first = sorted(listing, key=lambda x: (x["created_at"], x["id"]), reverse=True)
    assert listing == newest_first
    if len({x["created_at"] for x in listing}) == 5:  # distinct milliseconds: exactly the reverse order
        assert [x["id"] for x in listing] == ids[::-1]
    page = requests.get(f"{receiver.url}/ingest/list", params={"skip": 1, "limit": 2}, timeout=10).json()
    assert page["total"] == 5 and page["ldos"] == listing[1:3]
    assert set(page["ldos"][0]) == {"id", "status", "filename", "created_at", "size_bytes"}
    assert requests.get(f"{receiver.url}/ingest/list", params={"limit": 0}, timeout=10).status_code == 422


@pytest.mark.slow
def test_a_key_reused_for_another_cid_is_422_naming_both_and_stores_nothing(receiver: ReceiverProcess) -> None:
    key = str(uuid.uuid4())
    assert post(receiver.cid_url, cid="CID-FIRST", key=key).status_code == 201
    other = post(receiver.cid_url, cid="CID-OTHER", key=key, video=b"other clip")
    # not 409: the agent takes 409 for "already delivered" and would drop a clip that never arrived
    assert other.status_code == 422, other.text
    assert "CID-FIRST" in other.json()["detail"] and "CID-OTHER" in other.json()["detail"]
    assert "Idempotent-Replay" not in other.headers
    (ev,) = receiver.events()
    assert ev["cid"] == "CID-FIRST" and ev["requests"] == 1
    assert len(list((receiver.data_dir / "videos").iterdir())) == 1


@pytest.mark.slow
def test_one_receiver_per_data_dir(receiver: ReceiverProcess) -> None:
    second = subprocess.run([sys.executable, "-m", "edge_agent.receiver", "--port", str(free_port()), "--data-dir",
                             str(receiver.data_dir)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 75
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another receiver" in lines[0] and str(receiver.data_dir) in lines[0], second.stderr
    # the first one carries on, and concurrent posts of one key still make one record and one video
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: post(receiver.cid_url, key=key, video=b"v" * 2_000_000), range(4)))
    assert sorted(r.status_code for r in replies) == [201] * 4
    assert sum(r.headers.get("Idempotent-Replay") == "true" for r in replies) == 3
    assert len(receiver.events()) == 1 and len(list((receiver.data_dir / "videos").iterdir())) == 1
