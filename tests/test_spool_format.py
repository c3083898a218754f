"""The spool's format version, and the queue row as the source of truth for a clip's CID and metadata,
against a real receiver process: a format 1 spool (written by the build before versioning, kept in
tests/data/spool_format1) is migrated in place and delivered; a spool from a newer build is refused
with exit 73 (by each command, as a real process) and left byte for byte as it was; a clip whose sidecar
is lost or torn goes out with its CID and video. The commands whose exit code is not the subject run
through the CLI's entry point in this process, and those tests share one receiver, each checking only
what its own flush delivered."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import const
from edge_agent.delivery import spool_format
from edge_agent.delivery.spool import Spool
from tests import agent_process
from tests.cli_in_process import Cli
from tests.receiver_fixture import ReceiverProcess, free_port
from tests.spool_helpers import add_clip, crash, spool_config

SAMPLE = Path(__file__).resolve().parent.parent / "sample_media" / "conveyor_720p30.mp4"
FORMAT1 = Path(__file__).resolve().parent / "data" / "spool_format1"
# what the build before versioning queued in that spool: (event id, CID, sha256 of the video)
FORMAT1_CLIPS = [
    ("a0ef1944-1732-487b-9f6b-5a675fe02f6f", "CID-A0EF1944",
     "14885199edac0c69f0e080c9e0c8091670b5688ee982e043f6b0e32a691bd7dd"),
    ("5aeeaf10-61d8-4664-9b31-022e6cb97e92", "CID-5AEEAF10",
     "f2eac4e5bb347235ccaea7f1820bbb1c25b6b57cfe3f5d491561beca87dcb2b0"),
    ("2b9d04fa-4032-48e8-9ff4-6b1a38563251", "CID-2B9D04FA",
     "5e3d27d23dd8113146409e9f516221f57892fbfb353e4b58a263598a23b45ed0"),
]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return agent_process.run([*args], capture_output=True, text=True,
                             timeout=timeout, check=False)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    with ReceiverProcess(tmp_path_factory.mktemp("receiver")) as r:
        yield r


def delivered_by(receiver: ReceiverProcess, flush: Callable[[], subprocess.CompletedProcess[str]],
                 ) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run `flush` against the shared receiver: its result and the events the receiver got during it."""
    before = {e["event_id"] for e in receiver.events()}
    res = flush()
    return res, [e for e in receiver.events() if e["event_id"] not in before]


def config(tmp_path: Path, spool: Path, url: str) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"device_id: pi-7\nupload:\n  url: {url}\n  backoff_base_s: 0.2\n"
                   f"spool:\n  dir: {spool}\n  min_free_bytes: 0\n", encoding="utf-8")
    return cfg


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with the sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def format1_spool(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    shutil.copytree(FORMAT1, spool)
    return spool


def test_a_format_1_spool_is_read_unchanged_then_migrated_in_place_and_delivered(
        tmp_path: Path, in_process: Cli, receiver: ReceiverProcess) -> None:
    spool = format1_spool(tmp_path)
    cfg = config(tmp_path, spool, "http://127.0.0.1:9/cid")
    before = tree(spool)
    res = in_process("spool", "list", "--json", "--config", str(cfg))  # a reader beside an agent not yet upgraded
    assert res.returncode == 0, res.stderr
    assert [(e["event_id"], e["cid"]) for e in json.loads(res.stdout)] == [c[:2] for c in FORMAT1_CLIPS]
    after = tree(spool)
    assert {k: after.get(k) for k in before} == before  # a reader never migrates (SQLite may add its -shm)

    s = Spool(spool_config(spool))  # the owner migrates, in place
    assert s.store.setting("user_version") == spool_format.FORMAT
    rows = s.store.rows()
    s.close()
    assert [r.event_id for r in rows] == [c[0] for c in FORMAT1_CLIPS]
    for row, (_, cid, sha) in zip(rows, FORMAT1_CLIPS, strict=True):
        assert row.metadata["cid"] == cid and row.metadata["clip"]["sha256"] == sha and row.state == "ready"

    (spool / "clips" / f"{FORMAT1_CLIPS[0][0]}.json").unlink()  # the row holds the metadata now
    cfg = config(tmp_path, spool, receiver.cid_url)
    res, events = delivered_by(receiver, lambda: in_process("spool", "flush", "--config", str(cfg)))
    assert res.returncode == 0, res.stderr
    assert sorted((e["event_id"], e["cid"], e["sha256"]) for e in events) == sorted(FORMAT1_CLIPS)
    assert all(e["sha256_ok"] and e["metadata"]["device_id"] == "test" for e in events)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["spool", "flush"], ["spool", "status"], ["spool", "list"], ["spool", "requeue"],
                                     ["replay", "--drain-timeout", "1"], ["run"]])
def test_a_spool_from_a_newer_build_is_refused_with_exit_73_and_left_untouched(tmp_path: Path,
                                                                              command: list[str]) -> None:
    """A rollback: the older package meets the spool the newer one wrote."""
    spool = format1_spool(tmp_path)
    db = sqlite3.connect(spool / "queue.sqlite3")
    db.execute(f"PRAGMA user_version = {spool_format.FORMAT + 1}")
    db.close()
    cfg = config(tmp_path, spool, "http://127.0.0.1:9/cid")
    if command[0] == "run":
        cfg.write_text(cfg.read_text() + f"source:\n  kind: file\n  path: {SAMPLE}\nhttp:\n  port: {free_port()}\n")
        argv = [*command, "--config", str(cfg)]
    elif command[0] == "replay":
        argv = [*command, "--config", str(cfg), str(SAMPLE)]
    else:
        argv = [*command, "--config", str(cfg)]
    before = tree(spool)
    res = cli(*argv)
    assert res.returncode == const.EXIT_CANTCREAT, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if "format" in ln]
    assert len(lines) == 1 and f"format {spool_format.FORMAT + 1}" in lines[0], res.stderr
    assert f"reads format {spool_format.FORMAT}" in lines[0] and "upgrade edge-agent" in lines[0]
    assert "move" in lines[0] and "Traceback" not in res.stderr
    assert tree(spool) == before  # not a byte changed, no file added (no lock, no journal, no recovery)


def test_a_lost_and_a_torn_sidecar_still_send_their_clips_with_cid_and_video(tmp_path: Path, in_process: Cli,
                                                                             receiver: ReceiverProcess) -> None:
    """Power cut on an SD card: one sidecar gone, one cut short. The queue row has the CID and the
    metadata, so both clips go out whole to a real server. (Before: both quarantined with cid=?.)"""
    spool_dir = tmp_path / "spool"
    s = Spool(spool_config(spool_dir))
    clips = [add_clip(s, size=20_000) for _ in range(3)]
    crash(s)  # torn by a power cut: the next start checks every read
    (spool_dir / "clips" / f"{clips[0][0]}.json").unlink()
    torn = spool_dir / "clips" / f"{clips[1][0]}.json"
    torn.write_bytes(torn.read_bytes()[:40])
    cfg = config(tmp_path, spool_dir, receiver.cid_url)
    res, events = delivered_by(receiver, lambda: in_process("spool", "flush", "--config", str(cfg)))
    quarantined = list((spool_dir / "quarantine").glob("*.reason"))
    print(f"\nlost/torn sidecars: {len(quarantined)} quarantined, {len(events)} of 3 delivered")
    assert res.returncode == 0, res.stderr
    assert not quarantined
    assert sorted((e["event_id"], e["cid"], e["sha256"]) for e in events) == sorted(clips)
    for e in events:
        assert e["sha256_ok"] is True and e["metadata"]["cid"] == e["cid"]
        assert e["metadata"]["event_id"] == e["event_id"] and e["metadata"]["device_id"] == "test"
    assert "written again from the queue" in res.stderr


def test_requeue_brings_back_a_clip_quarantined_with_a_torn_sidecar(tmp_path: Path, in_process: Cli,
                                                                    receiver: ReceiverProcess) -> None:
    """A build before format 2 quarantined a clip whose sidecar a power cut had torn; the CID the torn
    sidecar starts with is enough for `spool requeue` to send it with its video."""
    spool_dir = tmp_path / "spool"
    s = Spool(spool_config(spool_dir))
    event_id, cid, sha = add_clip(s, size=20_000)
    s.close()
    # what that build left: row deleted, files in quarantine/ with the reason
    db = sqlite3.connect(spool_dir / "queue.sqlite3")
    db.execute("DELETE FROM queue")
    db.commit()
    db.close()
    q = spool_dir / "quarantine"
    side = (spool_dir / "clips" / f"{event_id}.json").read_bytes()
    (q / f"{event_id}.json").write_bytes(side[:60])
    shutil.move(spool_dir / "clips" / f"{event_id}.mp4", q / f"{event_id}.mp4")
    (spool_dir / "clips" / f"{event_id}.json").unlink()
    (q / f"{event_id}.reason").write_text("metadata sidecar unreadable: Unterminated string\n")
    cfg = config(tmp_path, spool_dir, receiver.cid_url)
    res = in_process("spool", "requeue", "--config", str(cfg))
    assert res.returncode == 0 and "requeued 1 clip(s)" in res.stdout, res.stdout + res.stderr
    res, events = delivered_by(receiver, lambda: in_process("spool", "flush", "--config", str(cfg)))
    assert res.returncode == 0, res.stderr
    assert [(e["event_id"], e["cid"], e["sha256"]) for e in events] == [(event_id, cid, sha)]
    assert events[0]["sha256_ok"] is True
