"""The spool survives crashes and bad files: it always starts, keeps what is sound, quarantines the
rest, stays inside its bounds counting every drop, and its CLI is safe beside a running agent."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.commands import spool as spool_cli
from edge_agent.delivery.spool import CLEAN_STOP, Spool, SpoolBusy
from edge_agent.metrics import Metrics
from tests.flaky_server import FlakyServer
from tests.metric_values import total, value
from tests.spool_helpers import add_clip, crash, fill, small_filesystem, spool_config

ROOT = Path(__file__).resolve().parent.parent


def reopen(path: Path, spool: Spool | None = None, m: Metrics | None = None, **kw: object) -> Spool:
    if spool is not None:
        spool.close()
    return Spool(spool_config(path, **kw), m)


# --- putting and taking ---------------------------------------------------------------------------


def test_put_writes_clip_sidecar_and_row(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, cid, sha = add_clip(spool)
    assert (tmp_path / "clips" / f"{event_id}.mp4").exists()
    side = json.loads((tmp_path / "clips" / f"{event_id}.json").read_text())
    assert side["cid"] == cid and side["sha256"] == sha and side["metadata"]["event_id"] == event_id
    head = spool.head()
    assert head is not None and head.event_id == event_id and head.metadata["cid"] == cid
    assert not list((tmp_path / "tmp").iterdir())
    spool.mark_delivered(event_id)
    assert spool.head() is None and not list((tmp_path / "clips").iterdir())


def test_queue_file_is_wal_with_full_sync(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    add_clip(spool)
    assert spool.store.setting("journal_mode") == "wal"
    assert spool.store.setting("synchronous") == 2  # FULL


def test_cid_only_event_is_queued_without_video(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    assert spool.put("0b7c4a59-5e5e-4e36-9d05-6f4a1c0e0f11", "CID-1", {"clip": {"error": "x"}}, None)
    head = spool.head()
    assert head is not None and head.video_path is None and head.metadata["clip"]["error"] == "x"
    spool = reopen(tmp_path, spool)  # and it survives a restart
    assert [e.cid for e in spool.entries()] == ["CID-1"]


def test_event_ids_never_become_odd_paths(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    for bad in ("../../etc/passwd", "a/b", "", "x" * 65, "é"):
        with pytest.raises(ValueError):
            spool.part_path(bad)
        with pytest.raises(ValueError):
            spool.put(bad, "CID", {}, None)


def test_next_due_keeps_order_while_the_head_backs_off(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    first, second = add_clip(spool)[0], add_clip(spool)[0]
    now = time.monotonic()
    due = spool.next_due(now)
    assert due is not None and due.event_id == first
    spool.mark_failed(first, "HTTP 503", retry_at_mono=now + 10)
    assert spool.next_due(now + 9) is None  # the newer clip waits behind the head
    due = spool.next_due(now + 10)
    assert due is not None and due.event_id == first and due.attempts == 1 and due.last_error == "HTTP 503"
    spool.mark_delivered(first)
    due = spool.next_due(now)
    assert due is not None and due.event_id == second


def test_restart_keeps_attempts_and_errors_but_retries_at_once(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id = add_clip(spool)[0]
    spool.mark_failed(event_id, "HTTP 500", retry_at_mono=time.monotonic() + 3600)
    spool = reopen(tmp_path, spool)
    due = spool.next_due(time.monotonic())
    assert due is not None and due.attempts == 1 and due.last_error == "HTTP 500"


def test_a_login_an_upload_error_quotes_is_never_kept_in_the_queue(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id = add_clip(spool)[0]
    spool.mark_failed(event_id, "cannot reach http://edge:Secr3t@10.0.0.2:8000/cid: refused")
    spool = reopen(tmp_path, spool)
    due = spool.next_due(time.monotonic())
    assert due is not None and due.last_error == "cannot reach http://edge:***@10.0.0.2:8000/cid: refused"
    assert all(b"Secr3t" not in f.read_bytes() for f in tmp_path.glob("queue.sqlite3*"))


def test_gauges_and_status_follow_the_queue(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path), m)
    before = time.time()
    a, b = add_clip(spool, size=10_000)[0], add_clip(spool, size=20_000)[0]
    assert (value(m, "edge_agent_spool_clips"), value(m, "edge_agent_spool_bytes")) == (2, 30_000)
    spool.mark_failed(a, "HTTP 503 busy", retry_at_mono=0)
    st = spool.status()
    assert (st.clips, st.bytes, st.last_error, st.quarantined) == (2, 30_000, "HTTP 503 busy", 0)
    assert st.oldest_at is not None and before <= st.oldest_at <= time.time()
    spool.quarantine(a, "HTTP 422")
    assert (value(m, "edge_agent_spool_clips"), value(m, "edge_agent_spool_bytes")) == (1, 20_000)
    spool.mark_delivered(b)
    assert (value(m, "edge_agent_spool_clips"), value(m, "edge_agent_spool_bytes")) == (0, 0)
    assert spool.status().quarantined == 1


def test_calls_after_close_are_harmless(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id = add_clip(spool)[0]
    spool.close()
    spool.mark_delivered(event_id)  # an uploader finishing after shutdown
    spool.mark_failed(event_id, "late")
    assert spool.head() is None and spool.next_due(time.monotonic()) is None
    assert not spool.put(str(uuid.uuid4()), "CID", {}, None)
    assert reopen(tmp_path).head() is not None  # the clip was kept: it is sent again


# --- reads committed at detection -----------------------------------------------------------------


def read_meta(event_id: str, cid: str) -> dict:
    return {"schema_version": 1, "event_id": event_id, "device_id": "test", "cid": cid,
            "detected_at": "2026-12-07T00:00:00.000Z", "clip": {},
            "detection": {"decoder": "zxing", "polygon": [], "frame_width": 1, "frame_height": 1, "hits": 1},
            "agent": {"version": "test"}}


def test_a_read_waits_for_its_clip_without_holding_back_the_reads_after_it(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    first = str(uuid.uuid4())
    assert spool.detected(first, "CID-FIRST", read_meta(first, "CID-FIRST"))
    later = add_clip(spool)[0]  # a later read whose clip was made sooner
    head = spool.head()
    assert head is not None and head.event_id == later  # a pending read is not sent
    assert [(e.event_id, e.pending) for e in spool.entries()] == [(first, True), (later, False)]
    assert (spool.status().clips, spool.status().pending) == (2, 1)
    assert not (tmp_path / "clips" / f"{first}.json").exists()  # a pending read is a row, no files
    add_clip(spool, event_id=first, cid="CID-FIRST")  # its clip joins it where it stands in the queue
    assert [(e.event_id, e.pending) for e in spool.entries()] == [(first, False), (later, False)]
    assert spool.head() is not None and spool.head().event_id == first  # type: ignore[union-attr]


@pytest.mark.parametrize("what_stopped", ["process", "device"])
def test_a_read_whose_clip_was_never_made_goes_out_cid_only_after_a_restart(tmp_path: Path,
                                                                            what_stopped: str) -> None:
    m = Metrics()
    event_id = str(uuid.uuid4())
    # a process that commits a read and dies before its clip is made (no close, no clean-up)
    code = (f"import os, sys; from edge_agent.delivery.spool import Spool; from tests.spool_helpers import "
            f"spool_config; from tests.test_spool import read_meta; s = Spool(spool_config(sys.argv[1])); "
            f"ok = s.detected('{event_id}', 'CID-CUT', read_meta('{event_id}', 'CID-CUT')); os._exit(0 if ok else 1)")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT).returncode == 0
    if what_stopped == "device":  # a power cut: the next start is in another boot
        with sqlite3.connect(tmp_path / "queue.sqlite3") as db:
            db.execute("UPDATE queue SET boot_id='an-earlier-boot'")
    spool = Spool(spool_config(tmp_path), m)
    (entry,) = spool.entries()
    assert (entry.event_id, entry.cid, entry.pending, entry.video_path) == (event_id, "CID-CUT", False, None)
    error = entry.metadata["clip"]["error"]
    assert ("lost power" in error) if what_stopped == "device" else ("killed or crashed" in error)
    assert entry.metadata["detected_at"] == "2026-12-07T00:00:00.000Z"  # what was known at detection goes too
    assert json.loads((tmp_path / "clips" / f"{event_id}.json").read_text())["metadata"]["clip"]["error"] == error
    assert value(m, "edge_agent_spool_recovered_total", reason="read_without_clip") == 1


def test_a_read_still_waiting_for_its_clip_when_the_spool_closes_goes_out_cid_only(tmp_path: Path) -> None:
    """The pipeline stops before the spool: a clip not made by then never will be (a stop out of time)."""
    spool = Spool(spool_config(tmp_path))
    event_id = str(uuid.uuid4())
    spool.detected(event_id, "CID-LATE", read_meta(event_id, "CID-LATE"))
    spool = reopen(tmp_path, spool)
    (entry,) = spool.entries()
    assert not entry.pending and "its stop ran out of time" in entry.metadata["clip"]["error"]


def test_a_full_disk_never_refuses_a_read_its_row(tmp_path: Path) -> None:
    """The spool keeps a reserve file it gives up when SQLite cannot grow its log on a full disk."""
    with small_filesystem(tmp_path / "small", "16m") as small_fs:
        _never_refuses_a_read_its_row(small_fs)


def _never_refuses_a_read_its_row(small_fs: Path) -> None:
    spool = Spool(spool_config(small_fs / "spool"))
    assert (small_fs / "spool" / "reserve").stat().st_size == 4 << 20
    fill(small_fs / "ballast")
    ids = [str(uuid.uuid4()) for _ in range(100)]
    for event_id in ids:  # 100 reads, each committed at detection then sent CID-only: the disk has no room
        assert spool.detected(event_id, "CID-FULL", read_meta(event_id, "CID-FULL"))
        assert spool.put(event_id, "CID-FULL", {**read_meta(event_id, "CID-FULL"), "clip": {"error": "x"}}, None)
    assert [e.event_id for e in spool.entries()] == ids and not (small_fs / "spool" / "reserve").exists()
    (small_fs / "ballast").unlink()
    spool.update_gauges()  # room again: the reserve is made again
    assert (small_fs / "spool" / "reserve").exists()


def test_a_read_whose_put_passed_its_commit_point_gets_its_video_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id = str(uuid.uuid4())
    spool.detected(event_id, "CID-PUT", read_meta(event_id, "CID-PUT"))
    data = os.urandom(20_000)
    part = spool.part_path(event_id)
    part.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    meta = {**read_meta(event_id, "CID-PUT"), "clip": {"sha256": sha, "size_bytes": len(data)}}
    # the put's files are durable in clips/, and the process dies before the row takes them
    spool.files.commit(event_id, {"cid": "CID-PUT", "metadata": meta, "created_at": time.time(), "has_video": True,
                                  "sha256": sha, "size_bytes": len(data)}, part)
    spool.close()
    spool = Spool(spool_config(tmp_path))
    (entry,) = spool.entries()
    assert not entry.pending and entry.video_path is not None and entry.sha256 == sha
    assert entry.metadata["clip"]["sha256"] == sha


@pytest.mark.parametrize("gone", ["delivered", "expired"])
def test_a_clip_half_deleted_by_a_crash_is_finished_not_quarantined(tmp_path: Path, gone: str) -> None:
    """Delivered (the server answered 2xx) or expired (older than spool.max_age_s): the row says so before
    its files go; a crash then leaves a row recovery finishes deleting, each saying which."""
    m = Metrics()
    spool = Spool(spool_config(tmp_path))
    event_id = add_clip(spool)[0]
    assert spool.store.set_state(event_id, gone)
    (tmp_path / "clips" / f"{event_id}.json").unlink()  # then the crash: the sidecar gone, the video not
    crash(spool)
    spool = Spool(spool_config(tmp_path), m)
    assert spool.entries() == [] and list((tmp_path / "clips").iterdir()) == []
    assert list((tmp_path / "quarantine").iterdir()) == []
    assert value(m, "edge_agent_spool_recovered_total", reason=f"{gone}_deleted") == 1


# --- recovery -------------------------------------------------------------------------------------


def test_recovery_drops_parts_and_reenqueues_orphans_in_order(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path))
    ids = [add_clip(spool)[0] for _ in range(3)]
    spool.close()
    (tmp_path / "tmp" / "dead.mp4.part").write_bytes(b"half")
    # a crash after the files were renamed but before the row was written: lose the rows
    (tmp_path / "queue.sqlite3").unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "queue.sqlite3") + suffix).unlink(missing_ok=True)
    spool = Spool(spool_config(tmp_path), m)
    assert [e.event_id for e in spool.entries()] == ids  # in the order they were made
    assert not (tmp_path / "tmp" / "dead.mp4.part").exists()
    assert value(m, "edge_agent_spool_recovered_total", reason="orphan_reenqueued") == 3


def test_a_put_cut_between_its_two_renames_is_finished_with_its_video(tmp_path: Path) -> None:
    """The sidecar's rename into clips/ is a put's commit point; a crash before the clip's own rename leaves
    it whole in tmp/: the next start moves it in (when its bytes match the sidecar) and sends the read with
    it, whatever else the queue holds."""
    spool = Spool(spool_config(tmp_path))
    others = [add_clip(spool)[0] for _ in range(3)]
    event_id = str(uuid.uuid4())
    assert spool.detected(event_id, "CID-CUT", read_meta(event_id, "CID-CUT"))
    _, _, sha = add_clip(spool, event_id=event_id, cid="CID-CUT")
    crash(spool)
    os.replace(tmp_path / "clips" / f"{event_id}.mp4", tmp_path / "tmp" / f"{event_id}.mp4.part")
    with sqlite3.connect(tmp_path / "queue.sqlite3") as db:  # the row not attached yet: still the read alone
        db.execute("UPDATE queue SET state='pending', has_video=0, sha256=NULL, size_bytes=0 WHERE event_id=?",
                   (event_id,))
    spool = Spool(spool_config(tmp_path))
    entry = next(e for e in spool.entries() if e.event_id == event_id)
    assert not entry.pending and entry.video_path is not None and "error" not in entry.metadata["clip"]
    assert hashlib.sha256(entry.video_path.read_bytes()).hexdigest() == sha
    assert not list((tmp_path / "tmp").glob("*.mp4.part"))
    assert all(e.video_path is not None for e in spool.entries() if e.event_id in others)


def test_a_clean_stop_spares_the_next_start_a_check_of_every_clip_and_a_crash_does_not(tmp_path: Path) -> None:
    """After a clean stop the next start trusts the clips it closed whole (the uploader checks each as it
    sends it); the mark is gone as soon as the spool opens, so a crash after that start is checked in full."""
    spool = Spool(spool_config(tmp_path))
    event_id = add_clip(spool)[0]
    spool.close()
    assert (tmp_path / CLEAN_STOP).exists()
    clip = tmp_path / "clips" / f"{event_id}.mp4"
    clip.write_bytes(clip.read_bytes()[:1000])  # damage the clean start does not look for
    told: list[tuple[int, int]] = []
    spool = Spool(spool_config(tmp_path), progress=lambda done, of: told.append((done, of)))
    assert not (tmp_path / CLEAN_STOP).exists()
    assert spool.entries()[0].video_path == clip and told == []  # nothing a clean stop leaves to look at
    crash(spool)
    spool = Spool(spool_config(tmp_path), progress=lambda done, of: told.append((done, of)))
    (entry,) = spool.entries()
    assert entry.video_path is None and "video lost on the device" in entry.metadata["clip"]["error"]
    assert told == [(0, 1)]  # a start that checks every read says how many, for systemd


def test_a_truncated_clip_goes_out_cid_only_and_its_video_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    bad, cid, _ = add_clip(spool)
    good, _, _ = add_clip(spool)
    crash(spool)
    clip = tmp_path / "clips" / f"{bad}.mp4"
    clip.write_bytes(clip.read_bytes()[:1000])
    spool = Spool(spool_config(tmp_path))
    entries = spool.entries()
    assert [e.event_id for e in entries] == [bad, good]  # the CID is kept, in its place in the queue
    assert entries[0].video_path is None and entries[0].cid == cid and entries[0].size_bytes == 0
    assert "video lost on the device" in entries[0].metadata["clip"]["error"]
    assert "torn write" in entries[0].metadata["clip"]["error"]
    assert (tmp_path / "quarantine" / f"{bad}.video-lost.mp4").stat().st_size == 1000
    assert not (tmp_path / "clips" / f"{bad}.mp4").exists()
    assert spool.status().quarantined == 0  # nothing to requeue: the event itself is still queued


def test_flipped_bit_sends_the_cid_without_the_damaged_video(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    bad = add_clip(spool)[0]
    crash(spool)
    clip = tmp_path / "clips" / f"{bad}.mp4"
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 1  # same size, one bit off
    clip.write_bytes(bytes(data))
    spool = reopen(tmp_path)
    head = spool.head()
    assert head is not None and head.event_id == bad and head.video_path is None
    assert "do not match their sha256" in head.metadata["clip"]["error"]
    assert "do not match their sha256" in (tmp_path / "quarantine" / f"{bad}.video-lost.reason").read_text()


def test_torn_sidecar_is_written_again_from_the_row_at_open_and_read_from_the_row_at_runtime(
        tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    (at_open, cid_open, sha_open), (at_runtime, cid_runtime, _), (good, _, _) = (add_clip(spool) for _ in range(3))
    crash(spool)
    (tmp_path / "clips" / f"{at_open}.json").write_text('{"cid": "CID-')  # torn by a power cut
    spool = reopen(tmp_path)
    assert [e.event_id for e in spool.entries()] == [at_open, at_runtime, good]
    restored = json.loads((tmp_path / "clips" / f"{at_open}.json").read_text())
    assert restored["cid"] == cid_open and restored["metadata"]["clip"]["sha256"] == sha_open
    (tmp_path / "clips" / f"{at_runtime}.json").write_bytes(b"\0" * 100)  # damaged while running
    spool.mark_delivered(at_open)
    head = spool.head()
    assert head is not None and head.event_id == at_runtime and head.cid == cid_runtime
    assert head.metadata["cid"] == cid_runtime and head.video_path is not None
    assert not list((tmp_path / "quarantine").glob("*.reason"))


def test_a_clip_whose_files_vanished_still_goes_out_with_its_cid(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, cid, _ = add_clip(spool)
    crash(spool)
    for p in (tmp_path / "clips").iterdir():
        p.unlink()
    spool = reopen(tmp_path)
    head = spool.head()
    assert head is not None and head.cid == cid and head.video_path is None
    assert "clip file missing" in head.metadata["clip"]["error"]


def test_zeroed_queue_file_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path))
    ids = [add_clip(spool)[0] for _ in range(3)]
    spool.close()
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "queue.sqlite3") + suffix).unlink(missing_ok=True)
    db = tmp_path / "queue.sqlite3"
    db.write_bytes(b"\0" * db.stat().st_size)
    spool = Spool(spool_config(tmp_path), m)
    assert [e.event_id for e in spool.entries()] == ids
    assert list((tmp_path / "quarantine").glob("queue.sqlite3*.corrupt-*"))
    assert value(m, "edge_agent_spool_recovered_total", reason="queue_rebuilt") == 1
    add_clip(spool)  # and it works as a queue again
    assert len(reopen(tmp_path, spool).entries()) == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_any_damaged_queue_file_still_starts(tmp_path: Path, damage: str) -> None:
    spool = Spool(spool_config(tmp_path))
    ids = [add_clip(spool)[0] for _ in range(2)]
    spool.close()
    db = tmp_path / "queue.sqlite3"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    raw = db.read_bytes()
    db.write_bytes({"garbage": os.urandom(len(raw)), "truncated": raw[:1500], "empty": b""}[damage])
    assert [e.event_id for e in reopen(tmp_path).entries()] == ids


def test_clip_without_sidecar_is_quarantined(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir(parents=True)
    (tmp_path / "clips" / "stray.mp4").write_bytes(b"x")
    spool = Spool(spool_config(tmp_path))
    assert spool.head() is None
    assert (tmp_path / "quarantine" / "stray.mp4").exists()


def test_requeue_brings_quarantined_clips_back(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id, _, _ = add_clip(spool)
    spool.mark_failed(event_id, "HTTP 422", retry_at_mono=time.monotonic() + 60)
    spool.quarantine(event_id, "HTTP 422")
    assert spool.head() is None
    assert spool.requeue() == 1
    head = spool.next_due(time.monotonic())
    assert head is not None and head.event_id == event_id and head.attempts == 0
    assert spool.status().quarantined == 0


@pytest.mark.slow
def test_kill9_while_putting_leaves_only_whole_clips(tmp_path: Path) -> None:
    """A process putting clips as fast as it can, killed at random moments: after each kill the spool
    opens with every clip it confirmed, each whole (sha256), and nothing half-made."""
    child = textwrap.dedent(f"""
        import hashlib, os, sys, uuid
        sys.path.insert(0, {str(ROOT)!r})
        from edge_agent.config import SpoolConfig
        from edge_agent.delivery.spool import Spool, SpoolBusy
        spool = Spool(SpoolConfig(dir=sys.argv[1], min_free_bytes=0))
        print("ready", flush=True)
        while True:
            eid = str(uuid.uuid4())
            data = os.urandom(150_000)
            part = spool.part_path(eid)
            with open(part, "wb") as f:
                for i in range(0, len(data), 30_000):
                    f.write(data[i:i + 30_000])
            sha = hashlib.sha256(data).hexdigest()
            assert spool.put(eid, "CID-" + eid[:8], {{"event_id": eid, "clip": {{"sha256": sha}}}}, part)
            print(eid, sha, flush=True)
    """)
    rng = random.Random(5)
    confirmed: dict[str, str] = {}
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        confirmed |= dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    spool = Spool(spool_config(tmp_path))
    entries = {e.event_id: e for e in spool.entries()}
    assert len(confirmed) > 10, "the child should have put clips before each kill"
    assert set(confirmed) <= set(entries)  # every confirmed put survived
    for e in entries.values():  # anything else is an unconfirmed put that got through: also whole
        assert e.video_path is not None and hashlib.sha256(e.video_path.read_bytes()).hexdigest() == e.sha256
    assert not list((tmp_path / "tmp").iterdir())
    assert not list((tmp_path / "quarantine").iterdir())
    assert {p.stem for p in (tmp_path / "clips").iterdir()} == set(entries)


# --- one owner ------------------------------------------------------------------------------------


def test_a_reader_beside_the_owner_changes_nothing_and_a_second_owner_is_refused(tmp_path: Path) -> None:
    """The agent's clip worker may be writing a .part right now: `spool status` must not delete it."""
    owner = Spool(spool_config(tmp_path))
    part = owner.part_path(str(uuid.uuid4()))
    part.write_bytes(b"being written")
    with pytest.raises(SpoolBusy) as busy:
        Spool(spool_config(tmp_path))
    assert busy.value.pid == os.getpid()
    reader = Spool.open_reader(spool_config(tmp_path))
    assert not reader.owner and reader.owner_pid == os.getpid()
    assert part.exists()
    add_clip(owner)
    assert reader.status().clips == 1  # it still reads the queue, live
    reader.close()
    owner.close()
    assert Spool.open_reader(spool_config(tmp_path)).owner_pid is None  # nobody holds it now
    assert reopen(tmp_path).owner and not part.exists()  # the next owner recovers


# --- bounds ---------------------------------------------------------------------------------------


def with_video(spool: Spool) -> list[str]:
    return [e.event_id for e in spool.entries() if e.video_path is not None]


def test_max_bytes_drops_the_oldest_videos_and_keeps_every_read(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path, max_bytes=1 << 20), m)
    clips = [add_clip(spool, size=300_000) for _ in range(5)]
    ids = [c[0] for c in clips]
    assert [e.event_id for e in spool.entries()] == ids  # every read still goes out
    assert with_video(spool) == ids[2:]
    assert value(m, "edge_agent_spool_videos_dropped_total", reason="max_bytes_dropped_oldest") == 2
    assert total(m, "edge_agent_spool_dropped_total") == 0
    assert spool.status().bytes <= 1 << 20 and spool.status().videos_dropped == {"max_bytes_dropped_oldest": 2}
    for event_id, cid, _ in clips[:2]:
        assert f"cid={cid} clip={event_id} reason=max_bytes_dropped_oldest" in caplog.text
        entry = next(e for e in spool.entries() if e.event_id == event_id)
        assert "spool.max_bytes" in entry.metadata["clip"]["error"] and "sha256" not in entry.metadata["clip"]
        assert not (tmp_path / "clips" / f"{event_id}.mp4").exists()
        assert json.loads((tmp_path / "clips" / f"{event_id}.json").read_text())["has_video"] is False


def test_max_bytes_reject_new_keeps_the_new_read_without_its_video(tmp_path: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(tmp_path, max_bytes=1 << 20, on_full="reject_new"), m)
    ids = [add_clip(spool, size=300_000)[0] for _ in range(3)]
    event_id = str(uuid.uuid4())
    part = spool.part_path(event_id)
    part.write_bytes(os.urandom(300_000))
    stored = spool.put(event_id, "CID-NEW", {"clip": {"sha256": "x", "duration_s": 5.0}}, part)
    assert stored.kept and "spool.max_bytes" in (stored.video_error or "")
    assert [e.event_id for e in spool.entries()] == ids + [event_id] and with_video(spool) == ids
    assert spool.entries()[-1].metadata["clip"] == {"duration_s": 5.0, "error": stored.video_error}
    assert value(m, "edge_agent_spool_videos_dropped_total", reason="max_bytes_rejected_new") == 1
    assert not list((tmp_path / "tmp").iterdir())


def test_a_video_no_drop_could_make_room_for_is_let_go_without_dropping_older_ones(tmp_path: Path) -> None:
    """drop_oldest gives older videos up only when that makes the new one fit: a video larger than
    spool.max_bytes itself would cost every queued video and still not be kept."""
    m = Metrics()
    spool = Spool(spool_config(tmp_path, max_bytes=1 << 20), m)
    ids = [add_clip(spool, size=300_000)[0] for _ in range(3)]
    event_id = str(uuid.uuid4())
    part = spool.part_path(event_id)
    part.write_bytes(os.urandom((1 << 20) + 1))
    stored = spool.put(event_id, "CID-HUGE", {"clip": {"sha256": "x", "duration_s": 5.0}}, part)
    assert stored.kept and "spool.max_bytes" in (stored.video_error or "")
    assert with_video(spool) == ids  # the older videos are all still there
    assert value(m, "edge_agent_spool_videos_dropped_total", reason="max_bytes_rejected_new") == 1
    assert value(m, "edge_agent_spool_videos_dropped_total", reason="max_bytes_dropped_oldest") == 0


def test_bounds_change_live(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path, on_full="reject_new"))
    add_clip(spool, size=600_000)
    spool.update_config(spool_config(tmp_path / "elsewhere", max_bytes=1 << 20, on_full="reject_new"))
    assert spool.root == tmp_path and spool.cfg.dir == str(tmp_path)  # the folder is restart-only
    part = spool.part_path(str(uuid.uuid4()))
    part.write_bytes(os.urandom(600_000))
    stored = spool.put(part.name.split(".")[0], "CID", {}, part)
    assert stored.kept and stored.video_error is not None


def test_old_clips_expire(tmp_path: Path) -> None:
    m = Metrics()
    now = [1000.0]
    spool = Spool(spool_config(tmp_path, max_age_s=60), m, monotonic=lambda: now[0])
    old = add_clip(spool)[0]
    now[0] += 59.9
    add_clip(spool)  # a put checks the bounds first
    assert len(spool.entries()) == 2 and value(m, "edge_agent_spool_dropped_total", reason="max_age") == 0
    now[0] += 0.2  # the first clip is 60.1 s old
    spool.update_config(spool_config(tmp_path, max_age_s=60))
    add_clip(spool)
    assert old not in {e.event_id for e in spool.entries()} and len(spool.entries()) == 2
    assert value(m, "edge_agent_spool_dropped_total", reason="max_age") == 1


def test_a_spool_says_its_own_drops_beside_the_count_its_queue_file_keeps_across_runs(tmp_path: Path) -> None:
    """`dropped` is the queue file's, across runs (`spool status`); `dropped_since_open` is what this
    object gave up, a run's own figure (replay's report)."""
    now = [1000.0]
    spool = Spool(spool_config(tmp_path, max_age_s=60), monotonic=lambda: now[0])
    add_clip(spool)
    now[0] += 61
    add_clip(spool)  # a put checks the bounds first: the first clip goes
    st = spool.status()
    assert st.dropped == st.dropped_since_open == {"max_age": 1}
    spool.close()
    again = Spool(spool_config(tmp_path, max_age_s=60), monotonic=lambda: now[0])
    assert again.status().dropped == {"max_age": 1} and again.status().dropped_since_open == {}
    now[0] += 61
    add_clip(again)
    st = again.status()
    assert st.dropped == {"max_age": 2} and st.dropped_since_open == {"max_age": 1}


def test_a_wall_clock_jump_does_not_age_clips_made_this_boot(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pi without a real-time clock boots at its last saved time and NTP jumps it ahead later."""
    m = Metrics()
    wall = [time.time()]
    spool = Spool(spool_config(tmp_path, max_age_s=3600), m, wall=lambda: wall[0])
    kept = add_clip(spool)[0]
    wall[0] += 8 * 86_400  # NTP steps the clock 8 days ahead
    add_clip(spool)
    assert kept in {e.event_id for e in spool.entries()}
    assert value(m, "edge_agent_spool_dropped_total", reason="max_age") == 0
    # a clip from an earlier boot is aged by the wall clock only if it was synchronised then and is now
    db = sqlite3.connect(tmp_path / "queue.sqlite3", isolation_level=None)
    db.execute("UPDATE queue SET boot_id='an-earlier-boot', clock_synced=0 WHERE event_id=?", (kept,))
    monkeypatch.setenv("EDGE_AGENT_CLOCK_SYNCED", "1")
    spool.update_config(spool_config(tmp_path, max_age_s=3600))
    add_clip(spool)
    assert kept in {e.event_id for e in spool.entries()}  # stamped unsynchronised: its age is unknown
    db.execute("UPDATE queue SET clock_synced=1 WHERE event_id=?", (kept,))
    monkeypatch.setenv("EDGE_AGENT_CLOCK_SYNCED", "0")
    spool.update_config(spool_config(tmp_path, max_age_s=3600))
    add_clip(spool)
    assert kept in {e.event_id for e in spool.entries()}  # not synchronised now: the wall clock says nothing
    monkeypatch.setenv("EDGE_AGENT_CLOCK_SYNCED", "1")
    spool.update_config(spool_config(tmp_path, max_age_s=3600))
    add_clip(spool)
    assert kept not in {e.event_id for e in spool.entries()}
    assert value(m, "edge_agent_spool_dropped_total", reason="max_age") == 1


def test_a_missing_clip_file_keeps_the_read_without_video(tmp_path: Path) -> None:
    spool = Spool(spool_config(tmp_path))
    event_id = str(uuid.uuid4())
    assert spool.put(event_id, "CID", {}, spool.part_path(event_id))
    (entry,) = spool.entries()
    assert entry.video_path is None and "clip file unreadable" in entry.metadata["clip"]["error"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_filesystem(tmp_path / "small", "2m") as mnt:
        yield mnt


@pytest.mark.parametrize("on_full", ["drop_oldest", "reject_new"])
def test_a_really_full_disk_keeps_every_read_and_carries_on(small_fs: Path, on_full: str) -> None:
    m = Metrics()
    spool = Spool(spool_config(small_fs / "spool", on_full=on_full), m)
    ids = [add_clip(spool, size=250_000)[0] for _ in range(4)]
    made = str(uuid.uuid4())  # a clip made just before the disk filled up
    part = spool.part_path(made)
    data = os.urandom(250_000)
    part.write_bytes(data)
    spool.detected(made, "CID-MADE", {"event_id": made, "clip": {}})
    fill(small_fs / "ballast")
    clip = {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    stored = spool.put(made, "CID-MADE", {"event_id": made, "clip": clip}, part)
    # the clip maker cannot write the next clip at all: that read goes CID-only
    cid_only = str(uuid.uuid4())
    assert spool.put(cid_only, "CID-DISKFULL", {"clip": {"error": "no space left on device"}}, None)
    queued = [e.event_id for e in spool.entries()]
    assert queued == ids + [made, cid_only] and stored.kept
    if on_full == "drop_oldest":  # the oldest video made room for the newest
        assert stored.video_error is None and with_video(spool) == ids[1:] + [made]
        assert value(m, "edge_agent_spool_videos_dropped_total", reason="disk_full_dropped_oldest") == 1
    else:
        assert "spool disk full" in (stored.video_error or "") and with_video(spool) == ids
        assert value(m, "edge_agent_spool_videos_dropped_total", reason="disk_full") == 1
    assert total(m, "edge_agent_spool_dropped_total") == 0
    assert not list((small_fs / "spool" / "tmp").iterdir())
    # restart on the full disk: it opens, and what it holds is consistent
    spool = reopen(small_fs / "spool", spool, on_full=on_full)
    assert [e.event_id for e in spool.entries()] == queued
    videos = with_video(spool)
    assert {p.stem for p in (small_fs / "spool" / "clips").glob("*.mp4")} == set(videos)
    # and it delivers everything it kept
    (small_fs / "ballast").unlink()
    from edge_agent import __version__
    from edge_agent.delivery.uploader import Uploader
    from tests.spool_helpers import fast_upload

    with FlakyServer() as server:
        assert Uploader(spool, fast_upload(server.url), Metrics(), __version__).drain(10)
    assert list(server.delivered) == queued
    assert {k for k, seen in server.delivered.items() if seen.video_sha256} == set(videos)


def test_a_zeroed_queue_file_on_a_full_disk_still_starts(small_fs: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(small_fs / "spool"))
    ids = [add_clip(spool, size=200_000)[0] for _ in range(3)]
    spool.close()
    db = small_fs / "spool" / "queue.sqlite3"
    db.write_bytes(b"\0" * db.stat().st_size)
    fill(small_fs / "ballast")
    spool = Spool(spool_config(small_fs / "spool"), m)  # no room for a new queue file: it starts anyway
    assert [e.event_id for e in spool.entries()] == ids
    assert value(m, "edge_agent_spool_recovered_total", reason="queue_in_memory") == 1
    spool.mark_delivered(ids[0])
    assert [e.event_id for e in spool.entries()] == ids[1:]


def test_the_free_space_floor_drops_the_oldest(small_fs: Path) -> None:
    m = Metrics()
    spool = Spool(spool_config(small_fs / "spool", min_free_bytes=1 << 20), m)
    for _ in range(8):
        add_clip(spool, size=250_000)
    assert value(m, "edge_agent_spool_videos_dropped_total", reason="min_free_bytes_dropped_oldest") >= 3
    assert spool.status().clips == 8 and 2 <= len(with_video(spool)) <= 4
    assert len(with_video(reopen(small_fs / "spool", spool, min_free_bytes=1 << 20))) >= 2  # restarts fine


@pytest.mark.parametrize("on_full", ["drop_oldest", "reject_new"])
def test_the_free_space_floor_on_any_disk(tmp_path: Path, on_full: str) -> None:
    """min_free_bytes driven on the real disk of the test folder, no tmpfs needed: a floor above what is
    free makes every new clip a drop, counted by reason and kept in the queue file for `spool status`."""
    spool = Spool(spool_config(tmp_path, on_full=on_full))
    first = add_clip(spool)[0]
    floor = shutil.disk_usage(tmp_path).free + (1 << 30)
    spool = reopen(tmp_path, spool, min_free_bytes=floor, on_full=on_full)
    event_id = str(uuid.uuid4())
    part = spool.part_path(event_id)
    part.write_bytes(b"x" * 1000)
    stored = spool.put(event_id, "CID-FLOOR", {"event_id": event_id, "clip": {}}, part)
    assert stored.kept and [e.event_id for e in spool.entries()] == [first, event_id]  # every read stays
    # the queued video is kept, the new one let go, with drop_oldest too: giving up the old one could not
    # bring the disk above the floor
    assert with_video(spool) == [first]
    assert spool.status().videos_dropped == {"min_free_bytes_rejected_new": 1}
    assert spool.status().dropped == {} and not part.exists()


# --- the CLI --------------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    spool_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["spool", *argv, "--config", str(config)])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = args.func(args)
    finally:  # the command sets up logging to this test's captured stderr: undo it for the next tests
        root.handlers[:], root.level = handlers, level
    out, err = capsys.readouterr()
    return code, out, err


def write_config(tmp_path: Path, url: str | None = None) -> Path:
    cfg = tmp_path / "config.yaml"
    upload = f"upload:\n  url: {url}\n  backoff_base_s: 0.05\n  backoff_cap_s: 0.2\n" if url else ""
    cfg.write_text(f"{upload}spool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\n")
    return cfg


def test_cli_status_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    spool = Spool(spool_config(tmp_path / "spool"))
    (a, cid_a, _), (b, _, _) = add_clip(spool, size=12_345), add_clip(spool)
    spool.mark_failed(a, "HTTP 503 busy")
    spool.close()
    code, out, _ = run_cli(capsys, cfg, "status")
    assert code == 0
    assert re.search(r"reads waiting +2\n", out) and "62345" in out and "HTTP 503 busy" in out
    assert re.search(r"quarantined +0\n", out)
    code, out, _ = run_cli(capsys, cfg, "status", "--json")
    st = json.loads(out)
    assert (st["clips"], st["bytes"], st["last_error"], st["quarantined"]) == (2, 62_345, "HTTP 503 busy", 0)
    code, out, _ = run_cli(capsys, cfg, "list")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["EVENT", "ID", "CID"] and len(lines) == 3
    assert lines[1].startswith(a) and cid_a in lines[1] and "HTTP 503 busy" in lines[1] and lines[2].startswith(b)
    code, out, _ = run_cli(capsys, cfg, "list", "--json")
    assert [(e["event_id"], e["attempts"]) for e in json.loads(out)] == [(a, 1), (b, 0)]


def test_cli_status_beside_the_running_agent_deletes_nothing(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    agent = Spool(spool_config(tmp_path / "spool"))
    part = agent.part_path(str(uuid.uuid4()))
    part.write_bytes(b"the clip worker is writing this")
    code, out, _ = run_cli(capsys, cfg, "status")
    assert code == 0 and f"running agent (pid {os.getpid()})" in out
    code, out, _ = run_cli(capsys, cfg, "list")
    assert code == 0
    assert part.exists()
    assert not list((tmp_path / "spool" / "quarantine").iterdir())


def test_cli_flush_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    ids = [add_clip(spool)[0] for _ in range(3)]
    spool.close()
    code, _, err = run_cli(capsys, write_config(tmp_path), "flush")
    assert code == const.EXIT_QUEUED and "upload.url is not set" in err
    with FlakyServer([503] * 50) as server:  # down for longer than the timeout
        code, _, err = run_cli(capsys, write_config(tmp_path, server.url), "flush", "--timeout", "0.5")
    assert code == const.EXIT_QUEUED and "3 clip(s) still queued" in err and "HTTP 503" in err
    with FlakyServer() as server:
        code, out, _ = run_cli(capsys, write_config(tmp_path, server.url), "flush", "--timeout", "10")
    assert code == 0 and "delivered 3 clip(s); the spool is empty" in out and list(server.delivered) == ids


def test_cli_flush_beside_the_running_agent_waits_for_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agent = Spool(spool_config(tmp_path / "spool"))
    add_clip(agent)
    with FlakyServer() as server:
        code, _, err = run_cli(capsys, write_config(tmp_path, server.url), "flush", "--timeout", "0.3")
        assert code == const.EXIT_QUEUED and "is running" in err
        assert server.seen == []  # it did not race the agent's uploader


def test_cli_flush_beside_the_running_agent_counts_what_it_did_with_the_waiting_clips(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """While flush waits, the agent delivers one waiting clip, sets the other aside and queues two new ones:
    1 delivered, 1 quarantined, 2 still queued (counting the queue before and after said 0, or less than 0
    with more new clips than delivered ones)."""
    agent = Spool(spool_config(tmp_path / "spool"))
    delivered, refused = add_clip(agent)[0], add_clip(agent)[0]
    acted = []

    def agent_meanwhile(seconds: float) -> None:  # flush's first poll: it has read the queue by now
        if not acted:
            agent.mark_delivered(delivered)
            agent.quarantine(refused, "HTTP 422")
            acted.extend([add_clip(agent)[0], add_clip(agent)[0]])
        time.sleep(seconds)

    monkeypatch.setattr(spool_cli, "time", argparse.Namespace(monotonic=time.monotonic, sleep=agent_meanwhile))
    with FlakyServer() as server:
        code, out, err = run_cli(capsys, write_config(tmp_path, server.url), "flush", "--timeout", "0.3")
    assert acted, "flush never waited"
    assert code == const.EXIT_FAILED and "is running" in err, err
    assert "delivered 1 clip(s); 1 refused by the server and quarantined" in err
    assert "2 clip(s) still queued" in err


def test_cli_requeue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    event_id = add_clip(spool)[0]
    spool.quarantine(event_id, "HTTP 422")
    spool.close()
    code, out, _ = run_cli(capsys, write_config(tmp_path), "requeue")
    assert code == 0 and "requeued 1 clip(s)" in out
    assert [e.event_id for e in reopen(tmp_path / "spool").entries()] == [event_id]


def test_sqlite_row_and_files_agree_after_every_operation(tmp_path: Path) -> None:
    """A model check: random reads made, clips put, deliveries, failures, quarantines, requeues and restarts;
    after each step the rows, the files and the counts agree with the model, and a reopen sees the same
    queue. A restart sends the reads whose clip was not made CID-only; max_bytes lets the oldest videos go."""
    rng = random.Random(11)
    spool = Spool(spool_config(tmp_path, max_bytes=2 << 20))
    model: list[str] = []
    pending: set[str] = set()
    video: dict[str, int] = {}  # reads with a video queued, and its size
    for _ in range(120):
        op = rng.choice(["detect", "put", "put", "deliver", "fail", "quarantine", "requeue", "reopen"])
        if op == "detect":
            event_id = str(uuid.uuid4())
            assert spool.detected(event_id, "CID-P", {"event_id": event_id, "clip": {}})
            model.append(event_id)
            pending.add(event_id)
        elif op == "put":
            size = rng.randint(1, 400_000)
            for oldest in [i for i in model if i in video]:
                if sum(video.values()) + size <= 2 << 20:
                    break
                del video[oldest]  # max_bytes: its read stays, CID-only
            event_id = rng.choice(sorted(pending)) if pending and rng.random() < 0.7 else str(uuid.uuid4())
            add_clip(spool, size=size, event_id=event_id)
            if event_id in pending:
                pending.discard(event_id)  # the clip joins its read where it stands
            else:
                model.append(event_id)
            video[event_id] = size
        elif op in ("deliver", "fail", "quarantine") and set(model) - pending:
            head = spool.head()
            first = next(i for i in model if i not in pending)  # pending reads hold nobody back
            assert head is not None and head.event_id == first
            if op == "deliver":
                spool.mark_delivered(first)
                model.remove(first)
            elif op == "fail":
                spool.mark_failed(first, "x")
            else:
                spool.quarantine(first, "x")
                model.remove(first)
            if op != "fail":
                video.pop(first, None)
        elif op == "requeue":
            back = {p.stem for p in (tmp_path / "quarantine").glob("*.json")}
            assert spool.requeue() == len(back)
            model += [e.event_id for e in spool.entries() if e.event_id in back]
            video.update({e.event_id: e.size_bytes for e in spool.entries() if e.event_id in back and e.video_path})
        elif op == "reopen":
            spool = reopen(tmp_path, spool, max_bytes=2 << 20)
            pending.clear()  # their clips will never come: they go out CID-only
        entries = spool.entries()
        assert [e.event_id for e in entries] == model
        assert {e.event_id for e in entries if e.pending} == pending
        assert {e.event_id: e.size_bytes for e in entries if e.video_path} == video
        assert {p.name for p in (tmp_path / "clips").iterdir()} == (
            {f"{i}.json" for i in model if i not in pending} | {f"{i}.mp4" for i in video})
    with sqlite3.connect(tmp_path / "queue.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_clip_quarantined_after_its_sidecar_was_lost_can_be_requeued(tmp_path: Path) -> None:
    """Quarantine writes the row's copy beside the video, so `spool requeue` brings the clip back with its
    CID whatever became of its sidecar."""
    spool = Spool(spool_config(tmp_path))
    event_id, cid, sha = add_clip(spool)
    (tmp_path / "clips" / f"{event_id}.json").unlink()
    spool.quarantine(event_id, "refused by the server: 422")
    assert json.loads((tmp_path / "quarantine" / f"{event_id}.json").read_text())["cid"] == cid
    assert spool.head() is None
    assert spool.requeue() == 1
    head = spool.head()
    assert head is not None and (head.event_id, head.cid, head.sha256) == (event_id, cid, sha)
    assert head.video_path is not None and head.video_path.exists()
