"""The reference receiver's start-up log says whether clips reach GET /ingest/list: with
USE_DATA_INGESTION off, /cid keeps them to itself and the list stays empty, which surprised people."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from edge_agent import __version__
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import Uploader
from edge_agent.metrics import Metrics
from tests.receiver_fixture import ReceiverProcess, free_port
from tests.spool_helpers import add_clip, fast_upload, spool_config


def deliver_one(tmp_path: Path, url: str) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    add_clip(spool)
    up = Uploader(spool, fast_upload(url, read_timeout_s=10.0), Metrics(), __version__)
    head = spool.head()
    assert head is not None and up.attempt(head) == "delivered"
    spool.close()


def totals(r: ReceiverProcess) -> tuple[int, int]:
    return (requests.get(f"{r.url}/cid/list", timeout=5).json()["total"],
            requests.get(f"{r.url}/ingest/list", timeout=5).json()["total"])


@pytest.mark.slow
def test_ingestion_off_is_said_at_start_and_the_list_stays_empty(tmp_path: Path) -> None:
    r = ReceiverProcess(tmp_path / "receiver", env={"USE_DATA_INGESTION": ""})
    r.extra_args = ["--log-level", "INFO"]
    with r:
        deliver_one(tmp_path, r.cid_url)
        assert totals(r) == (1, 0)
    log = r.log.read_text()
    assert ("data ingestion off: POST /cid keeps clips in " + str(tmp_path / "receiver")
            + " only and GET /ingest/list stays empty") in log
    assert "set USE_DATA_INGESTION=true and DATA_INGESTION_URL" in log


@pytest.mark.slow
def test_ingestion_on_is_said_at_start_and_the_list_fills(tmp_path: Path) -> None:
    port = free_port()
    r = ReceiverProcess(tmp_path / "receiver", port=port,
                        env={"USE_DATA_INGESTION": "true", "DATA_INGESTION_URL": f"http://127.0.0.1:{port}"})
    r.extra_args = ["--log-level", "INFO"]
    with r:
        deliver_one(tmp_path, r.cid_url)
        assert totals(r) == (1, 1)
    assert (f"data ingestion on: POST /cid forwards each clip to http://127.0.0.1:{port}/ingest/ldo"
            in r.log.read_text())
