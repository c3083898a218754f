"""An encoder that fails is not given up: `edge-agent run` re-encoding every clip (clip.width) into a
spool on a real file system that fills up. While it is full each clip fails with its real cause
(no space left), /healthz says 503 with the clip encoding down, the failure is counted by encoder;
once space is freed the next clips have video again and the daemon is healthy, without a restart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.label_video import make_label_video
from tests.receiver_fixture import free_port
from tests.test_daemon import ROOT, metrics, start_daemon, stop, wait_until

pytestmark = pytest.mark.slow

FREE_LEFT = 64 * 1024  # room for the spool's small writes (a CID without video), not for a clip


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"a small file system to fill needs mount (root): {res.stderr.strip()}")


def _fill(where: Path, leave: int) -> Path:
    st = os.statvfs(where)
    filler = where / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _health(port: int) -> tuple[int, dict]:
    r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    return r.status_code, r.json()


def _m(port: int, name: str) -> float:
    try:
        return metrics(port).get(name, 0.0)
    except requests.RequestException:
        return 0.0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_fails_encodes_and_once_freed_clips_are_encoded_with_video_again(tmp_path: Path) -> None:
    # looped: 8 s of labels (a new CID each second, beyond the 5 s cooldown when it comes round again);
    # small, as the subject is the disk, not the picture: still wider than the clips' 320 px
    video = make_label_video(tmp_path / "labels.mp4", seconds=8, per_s=1, size=(384, 216))
    spool = tmp_path / "spool"
    _mount_tmpfs(spool, "32m")
    log = tmp_path / "daemon.log"
    port = free_port()
    camera = f"{sys.executable} {ROOT / 'tests' / 'stream_sample.py'} {video} --loop"
    # 2 s clips: each one re-encoded is still far more than FREE_LEFT
    proc = start_daemon(tmp_path, camera, "http://127.0.0.1:9/cid", port,
                        extra="clip:\n  width: 320\n  pre_roll_s: 1\n  post_roll_s: 1\n")
    failures = 'edge_agent_clip_encoder_failures_total{encoder="libx264"}'
    try:
        wait_until(lambda: "encoder=libx264" in log.read_text(), 40, "a first clip encoded")
        assert _health(port)[0] == 200
        filler = _fill(spool, FREE_LEFT)
        wait_until(lambda: _m(port, failures) >= 1, 30, "an encode failing on the full disk")
        wait_until(lambda: _health(port)[0] == 503, 10, "/healthz to say unhealthy")
        assert _m(port, "edge_agent_clip_encoding_up") == 0  # what made /healthz say 503: frames still flow
        failed = [line for line in log.read_text().splitlines() if "clip failed" in line]
        assert failed and "libx264: [Errno 28] No space left on device" in failed[0], failed[:1]
        assert "none of them exists" not in failed[0]

        filler.unlink()  # space again: the next clip is encoded, without a restart
        ready_before = len(re.findall(r"clip ready .* encoder=libx264", log.read_text()))
        wait_until(lambda: len(re.findall(r"clip ready .* encoder=libx264", log.read_text())) >= ready_before + 2,
                   30, "clips encoded with video after the disk was freed")
        wait_until(lambda: _health(port)[0] == 200, 10, "/healthz to say healthy again")
        m = metrics(port)
    finally:
        assert stop(proc, timeout=20) == 0
        subprocess.run(["umount", "-l", str(spool)], check=False)
    after = log.read_text().split("clip encoding works again", 1)[1]
    print(f"full disk: {len(failed)} clip(s) without video, libx264 failures {m[failures]:.0f}; after freeing: "
          f"{len(re.findall('clip ready', after))} with video, {len(re.findall('clip failed', after))} without")
    assert m["edge_agent_clip_encoding_up"] == 1
    assert "clip failed" not in after.split("clip ready", 1)[0]  # the first clip after recovery has its video
