"""The spool survives crashes and bad files: it always starts, keeps what is sound, quarantines the
rest, and stays inside its bounds, counting every drop."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from edge_agent.metrics import Metrics
from edge_agent.spool import Spool
from tests.spool_helpers import add_clip, spool_config


def test_put_writes_clip_sidecar_and_row(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, cid, sha = add_clip(spool)
    assert (tmp_path / "clips" / f"{event_id}.mp4").exists()
    side = json.loads((tmp_path / "clips" / f"{event_id}.json").read_text())
    assert side["cid"] == cid and side["sha256"] == sha
    head = spool.head()
    assert head is not None and head.event_id == event_id and head.metadata["cid"] == cid
    assert not list((tmp_path / "tmp").iterdir())
    spool.mark_delivered(event_id)
    assert spool.head() is None and not list((tmp_path / "clips").iterdir())


def test_cid_only_event_is_queued_without_video(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    assert spool.put("0b7c4a59-5e5e-4e36-9d05-6f4a1c0e0f11", "CID-1", {"clip": {"error": "x"}}, None)
    head = spool.head()
    assert head is not None and head.video_path is None


def test_event_ids_never_become_odd_paths(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    with pytest.raises(ValueError):
        spool.part_path("../../etc/passwd")


def test_recovery_drops_parts_and_reenqueues_orphans_in_order(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    ids = [add_clip(spool)[0] for _ in range(3)]
    spool.close()
    (tmp_path / "tmp" / "dead.mp4.part").write_bytes(b"half")
    # a crash after the files were renamed but before the row was written: lose the rows
    (tmp_path / "queue.sqlite3").unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "queue.sqlite3") + suffix).unlink(missing_ok=True)
    spool = Spool(spool_config(tmp_path))
    assert [e.event_id for e in spool.entries()] == ids  # in the order they were made
    assert not (tmp_path / "tmp" / "dead.mp4.part").exists()


def test_truncated_clip_is_quarantined_and_the_rest_kept(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path), m)
    bad, _, _ = add_clip(spool)
    good, _, _ = add_clip(spool)
    spool.close()
    clip = tmp_path / "clips" / f"{bad}.mp4"
    clip.write_bytes(clip.read_bytes()[:1000])
    spool = Spool(spool_config(tmp_path), m)
    assert [e.event_id for e in spool.entries()] == [good]
    assert (tmp_path / "quarantine" / f"{bad}.mp4").exists()
    assert "sha256" in (tmp_path / "quarantine" / f"{bad}.reason").read_text()
    assert spool.status().quarantined == 1
    assert m.get("edge_agent_spool_quarantined_total") == 1


def test_zeroed_queue_file_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    ids = {add_clip(spool)[0] for _ in range(2)}
    spool.close()
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "queue.sqlite3") + suffix).unlink(missing_ok=True)
    db = tmp_path / "queue.sqlite3"
    db.write_bytes(b"\0" * db.stat().st_size)
    spool = Spool(spool_config(tmp_path))
    assert {e.event_id for e in spool.entries()} == ids
    assert list((tmp_path / "quarantine").glob("queue.sqlite3*.corrupt-*"))


def test_clip_without_sidecar_is_quarantined(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir(parents=True)
    (tmp_path / "clips" / "stray.mp4").write_bytes(b"x")
    spool = Spool(spool_config(tmp_path))
    assert spool.head() is None
    assert (tmp_path / "quarantine" / "stray.mp4").exists()


def test_requeue_brings_quarantined_clips_back(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, _, _ = add_clip(spool)
    spool.quarantine(event_id, "HTTP 422")
    assert spool.head() is None
    assert spool.requeue() == 1
    head = spool.head()
    assert head is not None and head.event_id == event_id


def test_max_bytes_drop_oldest_counts_and_keeps_newest(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path, max_bytes=1 << 20), m)
    ids = [add_clip(spool, size=300_000)[0] for _ in range(5)]
    assert [e.event_id for e in spool.entries()] == ids[2:]
    assert m.get("edge_agent_spool_dropped_total", reason="max_bytes_dropped_oldest") == 2
    assert spool.status().bytes <= 1 << 20


def test_max_bytes_reject_new_keeps_oldest(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path, max_bytes=1 << 20, on_full="reject_new"), m)
    ids = [add_clip(spool, size=300_000)[0] for _ in range(3)]
    with pytest.raises(AssertionError):
        add_clip(spool, size=300_000)
    assert [e.event_id for e in spool.entries()] == ids
    assert m.get("edge_agent_spool_dropped_total", reason="max_bytes_rejected_new") == 1
    assert not list((tmp_path / "tmp").iterdir())


def test_old_clips_expire(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path), m)
    add_clip(spool)
    spool.update_config(spool_config(tmp_path, max_age_s=0.05))
    time.sleep(0.1)
    add_clip(spool)  # a put checks the bounds first
    assert len(spool.entries()) == 1
    assert m.get("edge_agent_spool_dropped_total", reason="max_age") == 1


def test_full_disk_keeps_the_spool_working(tmp_path: Path) -> None:
    """On a real 3 MiB filesystem: the free-space floor drops the oldest, nothing crashes."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True,
                         check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip()}); "
                    "the max_bytes tests cover the same drop path")
    try:
        m = Metrics()
        spool = Spool(spool_config(mnt / "spool", min_free_bytes=1 << 20), m)
        for _ in range(12):
            add_clip(spool, size=250_000)
        assert m.total("edge_agent_spool_dropped_total") > 0
        assert spool.status().clips >= 4
        spool.close()
        assert Spool(spool_config(mnt / "spool", min_free_bytes=1 << 20)).status().clips >= 4  # restarts fine
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
