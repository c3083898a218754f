"""The LDO index behind `GET /ingest/list`: pages and exact totals equal to a plain sort of all rows
(SQLite and a real PostgreSQL), filters over HTTP, rebuild from the store after the index is lost,
repair of a crash between the objects and the row, and the `reindex` command."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from edge_agent.receiver.index import HOUR_US, LdoIndex, PostgresLdoIndex, SqliteLdoIndex
from edge_agent.receiver.objects import LocalObjects
from edge_agent.receiver.storage import LdoStorage
from tests.postgres_fixture import Postgres
from tests.receiver_fixture import ReceiverProcess

T0 = 1_795_000_123 * 1_000_000  # microseconds, not on an hour boundary


def synthetic_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        burst = rnd.random() < 0.3  # a busy hour with many LDOs, and ties on the same microsecond
        created = T0 + 7 * HOUR_US + rnd.randrange(0, 1000) if burst else T0 + rnd.randrange(0, 100 * HOUR_US)
        site = rnd.choice(["plant-a", "plant-b"])
        device = "cam-shared" if i % 17 == 0 else f"cam-{rnd.randrange(4)}"
        rows.append({"id": f"ldo_{i:016x}_{created // 1_000_000}", "base": f"{site}/{device}/d/x{i}", "key_hash": None,
                     "site": site, "device_id": device, "created_us": created, "size_bytes": i, "has_video": i % 5 != 0,
                     "status": "ingested"})
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LdoIndex]:
    if request.param == "sqlite":
        idx: LdoIndex = SqliteLdoIndex(tmp_path / "index.sqlite3")
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        idx = PostgresLdoIndex(pg.new_database())
    yield idx
    idx.close()


@pytest.mark.slow
def test_pages_and_totals_equal_a_plain_sort_under_any_filter(index: LdoIndex) -> None:
    rows = synthetic_rows(2500, seed=7)
    assert index.add(rows[:2000]) == 2000  # in bulk
    for r in rows[2000:]:
        assert index.add([r]) == 1  # one by one, as requests do
    assert index.add(rows[100:300]) == 0  # already there: neither a second row nor a second count
    rnd = random.Random(11)
    for _ in range(150):
        f: dict[str, Any] = {}
        if rnd.random() < 0.4:
            f["device_id"] = rnd.choice(["cam-0", "cam-1", "cam-shared", "cam-9"])
        if rnd.random() < 0.4:
            f["site"] = rnd.choice(["plant-a", "plant-b"])
        for bound in ("since_us", "until_us"):
            if rnd.random() < 0.4:
                t = T0 + rnd.randrange(-HOUR_US, 101 * HOUR_US)
                f[bound] = t - t % rnd.choice([1, HOUR_US, 24 * HOUR_US])  # also on hour and day boundaries
        match = [r for r in rows
                 if f.get("device_id", r["device_id"]) == r["device_id"] and f.get("site", r["site"]) == r["site"]
                 and r["created_us"] >= f.get("since_us", r["created_us"])
                 and r["created_us"] < f.get("until_us", r["created_us"] + 1)]
        match.sort(key=lambda r: (r["created_us"], r["id"]), reverse=True)
        skip, limit = rnd.choice([0, rnd.randrange(0, len(match) + 5)]), rnd.randrange(1, 60)
        total, page = index.list(skip, limit, **f)
        assert total == len(match), f
        assert [p["id"] for p in page] == [r["id"] for r in match[skip : skip + limit]], (f, skip, limit)
    total, page = index.list(0, 1)
    assert total == 2500 and set(page[0]) == {"id", "status", "filename", "created_at", "size_bytes"}


def post_ldo(url: str, key: str | None, device: str, size: int = 100) -> requests.Response:
    meta = {"event_id": key, "device_id": device, "detected_at": "2026-11-24T08:00:00Z"} if key else {
        "device_id": device}
    return requests.post(f"{url}/ingest/ldo", data={"metadata": json.dumps(meta)},
                         files={"video": ("v.mp4", b"v" * size, "video/mp4")},
                         headers={"Idempotency-Key": key} if key else {}, timeout=30)


def file_receiver(data_dir: Path, store: Path, site: str = "plant-a") -> ReceiverProcess:
    r = ReceiverProcess(data_dir)
    r.extra_args = ["--storage", f"file:{store}", "--site", site]
    return r


@pytest.mark.slow
def test_filters_over_http_and_a_lost_index_is_rebuilt_at_start(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with file_receiver(tmp_path / "r1", store) as r:
        keys = [str(uuid.uuid4()) for _ in range(12)]
        for i, key in enumerate(keys):
            assert post_ldo(r.url, key, f"cam-{i % 3}").status_code == 201
        assert post_ldo(r.url, None, "cam-0").status_code == 201  # no key: still listed
        before = r.ldos()
        cam1 = requests.get(f"{r.url}/ingest/list", params={"device_id": "cam-1"}, timeout=10).json()
        assert cam1["total"] == 4 and {x["id"] for x in cam1["ldos"]} < {x["id"] for x in before}
        assert requests.get(f"{r.url}/ingest/list", params={"site": "plant-b"}, timeout=10).json()["total"] == 0
        newest = before[0]["created_at"]
        since = requests.get(f"{r.url}/ingest/list", params={"since": newest}, timeout=10).json()
        until = requests.get(f"{r.url}/ingest/list", params={"until": newest}, timeout=10).json()
        assert since["total"] >= 1 and since["total"] + until["total"] == 13
        bad = requests.get(f"{r.url}/ingest/list", params={"since": "last week"}, timeout=10)
        assert bad.status_code == 422 and "RFC 3339" in bad.json()["detail"]
    assert len(before) == 13
    # a new receiver with an empty data dir on the same store: the index is rebuilt, same list
    with file_receiver(tmp_path / "r2", store) as r2:
        assert r2.ldos() == before
        # and the key is still known: a retry is a replay, not a second LDO
        again = post_ldo(r2.url, keys[4], "cam-1")
        assert again.status_code == 201 and again.headers.get("Idempotent-Replay") == "true"
        assert r2.ldos() == before


class _CrashingIndex(SqliteLdoIndex):
    """Dies like a receiver killed between writing the objects and writing the row."""

    def add(self, rows: Any, done_base: str | None = None) -> int:
        raise SystemExit("killed")


def test_a_crash_between_objects_and_row_is_repaired(tmp_path: Path) -> None:
    store, idx_path = tmp_path / "store", tmp_path / "data" / "ldo-index.sqlite3"
    seed = LdoStorage(LocalObjects(store), SqliteLdoIndex(idx_path), site="plant-a")
    seed.ingest("seed-key", {"device_id": "cam-0"}, None, None)  # a non-empty index: no rebuild at start
    seed.index.close()
    crashing = LdoStorage(LocalObjects(store), _CrashingIndex(idx_path), site="plant-a")
    crashing._prepared = True
    for key in ("k-keyed", None):
        with pytest.raises(SystemExit):
            crashing.ingest(key, {"device_id": "cam-1", "detected_at": "2026-11-24T08:00:00Z"}, None, None)
    crashing.index.close()
    objects = sorted(p.name for p in store.rglob("*.json") if "_keys" not in p.parts)
    assert len(objects) == 3
    rows = sqlite3.connect(idx_path).execute("SELECT COUNT(*), (SELECT COUNT(*) FROM ldo_pending) FROM ldo_index")
    assert rows.fetchone() == (1, 2)  # the two objects have no row yet, each has its pending mark
    with file_receiver(tmp_path / "data", store) as r:  # start-up resolves the pending marks
        listed = r.ldos()
        assert sorted(x["id"] + ".json" for x in listed) == objects
        replay = post_ldo(r.url, "k-keyed", "cam-1")
        assert replay.headers.get("Idempotent-Replay") == "true" and len(r.ldos()) == 3


@pytest.mark.slow
def test_reindex_command_rebuilds_an_index_from_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with file_receiver(tmp_path / "r", store) as r:
        for i in range(5):
            post_ldo(r.url, f"key-{i}", "cam-0")
        listed = r.ldos()
    res = subprocess.run([sys.executable, "-m", "edge_agent.receiver", "reindex", "--storage", f"file:{store}",
                          "--data-dir", str(tmp_path / "r"), "--index", f"sqlite:{tmp_path / 'new.sqlite3'}"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert "reindexed 5 LDOs" in res.stdout and "5 added" in res.stdout
    assert SqliteLdoIndex(tmp_path / "new.sqlite3").list(0, 10) == (5, listed)
    res = subprocess.run([sys.executable, "-m", "edge_agent.receiver", "reindex", "--storage", f"file:{store}",
                          "--index", "mysql://x"], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 78 and "expected postgresql://" in res.stderr
