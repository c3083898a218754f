"""A put's durability, as the kernel sees it: the fsyncs and renames of a real `Spool.put` in a real process,
traced by strace. A power cut keeps only what was fsynced (benchmarks/powercut.py cuts the power under a
running agent with LazyFS, which CI cannot mount); this pins the order that makes every state a cut can
leave recoverable (docs/architecture.md section 7), so an fsync removed or moved fails here:

1. the clip's bytes are fsynced before the clip is renamed into clips/;
2. the sidecar's bytes are fsynced before its rename into clips/, which comes first (the commit point);
3. clips/ itself is fsynced after both renames (a rename is durable only once its directory is);
4. the queue row's commit then reaches the disk before the put returns: the WAL is synced after that
   directory fsync (SQLite's synchronous=FULL; NORMAL would sync it only at a checkpoint).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

STRACE = shutil.which("strace")
SYSCALLS = "fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat"
# one read in a fresh process: the spool is opened (and its queue made) first, then the read committed at
# detection, then its clip put; the fsync of a marker file after each says in the trace where each returned
PUT = """
import os, sys, uuid
from pathlib import Path
from edge_agent.delivery.spool import Spool
from tests.spool_helpers import add_clip, spool_config
def mark(name):
    os.fsync(os.open(os.path.join(sys.argv[2], name), os.O_WRONLY | os.O_CREAT))
spool = Spool(spool_config(Path(sys.argv[1])))
mark("opened")
event_id = str(uuid.uuid4())
assert spool.detected(event_id, "CID-TRACE", {"event_id": event_id, "cid": "CID-TRACE", "clip": {}})
mark("detected-returned")
add_clip(spool, size=200_000, event_id=event_id)
mark("put-returned")
print(event_id)
spool.close()
"""
_SYNC = re.compile(r"^\d+\s+(fsync|fdatasync)\(\d+<([^>]*)>\)\s+=\s+0")
_RENAME = re.compile(r"^\d+\s+rename(?:at2?)?\(.*\)\s+=\s+0")
_UNLINK = re.compile(r"^\d+\s+unlink(?:at)?\(.*\)\s+=\s+0")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def trace_put(tmp_path: Path, script: str = PUT) -> tuple[str, list[tuple[str, ...]]]:
    """(event id, the script's syncs, renames and unlinks in order: ("sync", path), ("rename", from, to) or
    ("unlink", path))."""
    if STRACE is None:
        pytest.fail("strace is missing: ./dev.sh installs it (apt-get install strace)")
    spool = tmp_path / "spool"
    out = tmp_path / "strace.txt"
    res = subprocess.run([STRACE, "-f", "-y", "-qq", "-e", f"trace={SYSCALLS}", "-o", str(out), sys.executable,
                          "-c", script, str(spool), str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    event_id = res.stdout.strip().splitlines()[-1]
    steps: list[tuple[str, ...]] = []
    for line in out.read_text().splitlines():
        if m := _SYNC.match(line):
            steps.append(("sync", m.group(2)))
        elif _RENAME.match(line):
            paths = _QUOTED.findall(line)
            steps.append(("rename", paths[-2], paths[-1]))
        elif _UNLINK.match(line):
            steps.append(("unlink", _QUOTED.findall(line)[-1]))
    return event_id, steps


def first(steps: list[tuple[str, ...]], step: tuple[str, ...], after: int = -1) -> int:
    """Where `step` first happens after position `after`; fails the test if never."""
    for i, s in enumerate(steps):
        if i > after and s == step:
            return i
    raise AssertionError(f"{step} never happens after step {after}: {steps}")


@pytest.mark.slow  # a fresh interpreter under strace: about 2 s
def test_a_put_syncs_each_file_before_its_rename_the_folder_after_and_the_row_last(tmp_path: Path) -> None:
    event_id, steps = trace_put(tmp_path)
    spool = (tmp_path / "spool").resolve()
    tmp, clips = spool / "tmp", spool / "clips"
    mp4_part, json_part = str(tmp / f"{event_id}.mp4.part"), str(tmp / f"{event_id}.json.part")
    mp4, side = str(clips / f"{event_id}.mp4"), str(clips / f"{event_id}.json")

    clip_renamed = first(steps, ("rename", mp4_part, mp4))
    side_renamed = first(steps, ("rename", json_part, side))
    assert first(steps, ("sync", mp4_part)) < clip_renamed, "the clip is renamed before its bytes are on disk"
    assert first(steps, ("sync", json_part)) < side_renamed, "the sidecar is renamed before its bytes are on disk"
    assert side_renamed < clip_renamed, "the sidecar's rename is the commit point: it goes first"
    folder_synced = first(steps, ("sync", str(clips)), after=clip_renamed)
    row_synced = first(steps, ("sync", str(spool / "queue.sqlite3-wal")), after=folder_synced)
    assert row_synced < first(steps, ("sync", str(tmp_path.resolve() / "put-returned"))), \
        "put returned before the queue row's commit was on disk"


@pytest.mark.slow
def test_a_read_is_on_disk_before_detected_returns(tmp_path: Path) -> None:
    """The detect stage logs a read only after `detected` returns: the row's commit must be on disk by then."""
    _, steps = trace_put(tmp_path)
    spool = (tmp_path / "spool").resolve()
    opened = first(steps, ("sync", str(tmp_path.resolve() / "opened")))
    returned = first(steps, ("sync", str(tmp_path.resolve() / "detected-returned")))
    assert opened < first(steps, ("sync", str(spool / "queue.sqlite3-wal")), after=opened) < returned, \
        "detected returned before the read's row was on disk"


DELIVER = PUT.replace('print(event_id)', """print(event_id)
spool.mark_delivered(event_id)
mark("delivered-returned")""")


@pytest.mark.slow
def test_a_delivered_clip_is_marked_then_its_files_go_and_are_synced_gone_before_its_row(tmp_path: Path) -> None:
    """A sidecar left in clips/ without its row would be queued again at the next start: the folder is synced
    after the unlinks, and only then is the row deleted."""
    event_id, steps = trace_put(tmp_path, DELIVER)
    spool = (tmp_path / "spool").resolve()
    wal, clips = str(spool / "queue.sqlite3-wal"), spool / "clips"
    put = first(steps, ("sync", str(tmp_path.resolve() / "put-returned")))
    marked = first(steps, ("sync", wal), after=put)
    side_gone = first(steps, ("unlink", str(clips / f"{event_id}.json")), after=put)
    video_gone = first(steps, ("unlink", str(clips / f"{event_id}.mp4")), after=put)
    assert marked < side_gone < video_gone, "files deleted before the row said delivered"
    folder_synced = first(steps, ("sync", str(clips)), after=video_gone)
    row_deleted = first(steps, ("sync", wal), after=folder_synced)
    assert row_deleted < first(steps, ("sync", str(tmp_path.resolve() / "delivered-returned"))), \
        "the row's delete was not on disk when mark_delivered returned"


REQUEUE = PUT.replace('print(event_id)', """print(event_id)
spool.quarantine(event_id, "refused")
mark("quarantined")
assert spool.requeue() == 1
mark("requeued")""")


@pytest.mark.slow
def test_a_requeued_clip_is_back_in_clips_on_disk_before_its_row_names_it(tmp_path: Path) -> None:
    """A row committed before the moves out of quarantine/ are durable could name files a crash puts back
    there (sent again from quarantine later): clips/ is synced after the moves, the row after that."""
    event_id, steps = trace_put(tmp_path, REQUEUE)
    spool = (tmp_path / "spool").resolve()
    wal, clips, quarantine = str(spool / "queue.sqlite3-wal"), spool / "clips", spool / "quarantine"
    after = first(steps, ("sync", str(tmp_path.resolve() / "quarantined")))
    moved = first(steps, ("rename", str(quarantine / f"{event_id}.json"), str(clips / f"{event_id}.json")), after)
    moved = max(moved, first(steps, ("rename", str(quarantine / f"{event_id}.mp4"), str(clips / f"{event_id}.mp4")),
                             after))
    folder_synced = first(steps, ("sync", str(clips)), after=moved)
    row = first(steps, ("sync", wal), after=after)
    assert folder_synced < row < first(steps, ("sync", str(tmp_path.resolve() / "requeued"))), \
        "the requeued row was committed before its files were back in clips/ on disk"


CHECKPOINTS = """
import os, sys, uuid
from pathlib import Path
from edge_agent.delivery.spool import Spool
from tests.spool_helpers import add_clip, spool_config
def mark(name):
    os.fsync(os.open(os.path.join(sys.argv[2], name), os.O_WRONLY | os.O_CREAT))
spool = Spool(spool_config(Path(sys.argv[1])))
ids = [str(uuid.uuid4()) for _ in range(600)]
mark("detect-start")
for event_id in ids:
    spool.detected(event_id, "CID-CP", {"event_id": event_id, "cid": "CID-CP", "clip": {}})
mark("detect-end")
add_clip(spool, size=10_000, event_id=ids[0])
mark("put-end")
spool.close()
"""


@pytest.mark.slow
def test_reads_commit_with_one_log_sync_each_and_the_checkpoint_runs_off_the_detect_thread(tmp_path: Path) -> None:
    """600 reads (~2000 pages of log): each commit syncs the log once and nothing else (SQLite's own
    checkpoint, run inside the commit that fills its log, would copy the log into the queue file and sync
    both on the detect thread); the clip stage's put runs the checkpoint."""
    if STRACE is None:
        pytest.fail("strace is missing: ./dev.sh installs it (apt-get install strace)")
    out = tmp_path / "strace.txt"
    res = subprocess.run([STRACE, "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(out), sys.executable,
                          "-c", CHECKPOINTS, str(tmp_path / "spool"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    syncs = [m.group(2) for line in out.read_text().splitlines() if (m := _SYNC.match(line))]
    queue = str((tmp_path / "spool").resolve() / "queue.sqlite3")
    detect = syncs[syncs.index(str(tmp_path.resolve() / "detect-start")) + 1:
                   syncs.index(str(tmp_path.resolve() / "detect-end"))]
    put = syncs[syncs.index(str(tmp_path.resolve() / "detect-end")) + 1:
                syncs.index(str(tmp_path.resolve() / "put-end"))]
    # the reads' own connection syncs the folder once as it first writes the log (SQLite's new-journal rule)
    assert detect.count(f"{queue}-wal") == 600 and set(detect) <= {f"{queue}-wal", str(queue.rsplit("/", 1)[0])}, \
        set(detect)
    assert len(detect) <= 601
    assert queue in put, "the put did not checkpoint the log into the queue file"
