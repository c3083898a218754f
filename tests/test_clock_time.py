"""Time on a device without a real-time clock, through real agent processes: a wall clock shifted and
stepped while the agent runs (monotonic time untouched), the kernel's NTP state, and reboots as new
boot ids. Clips stamped under a stale clock are neither lost to it nor filed under its day."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.clock_env import DAY, Boot, agent_argv, agent_env, require_boots, set_shift
from tests.media_factory import make_video
from tests.receiver_fixture import ReceiverProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
STALE = -400 * DAY  # a Pi that booted without network, a year and more behind


def ts(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_the_shifted_clock_reaches_every_wall_clock_read_of_the_agent(tmp_path: Path) -> None:
    """The wrapper must move every way the agent reads the wall clock, and leave monotonic time alone;
    the agent's own wall times (capture.clock.wall_at, the metadata's RFC 3339) follow it."""
    shift = tmp_path / "shift"
    set_shift(shift, STALE)
    probe = ("import time, datetime, json\n"
             "from edge_agent.capture.clock import wall_at\n"
             "from edge_agent.delivery.contract import rfc3339\n"
             "from email.utils import formatdate\n"
             "from edge_agent.delivery.backoff import parse_retry_after\n"
             "now = time.time()\n"
             "print(json.dumps({'time': now, 'time_ns': time.time_ns() / 1e9, 'mono': time.monotonic(),\n"
             "  'dt_now': datetime.datetime.now(datetime.timezone.utc).timestamp(),\n"
             "  'utcnow': datetime.datetime.utcnow().replace(tzinfo=datetime.timezone.utc).timestamp(),\n"
             "  'gmtime': time.mktime(time.localtime()), 'wall_at': wall_at(time.monotonic()),\n"
             "  'rfc3339': rfc3339(wall_at(time.monotonic())),\n"
             "  'retry_after': parse_retry_after(formatdate(now + 90, usegmt=True))}))\n")
    before_mono = time.monotonic()
    res = subprocess.run(agent_argv()[:1] + ["-c", probe], env=agent_env(shift, None), capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    real = time.time()
    got = json.loads(res.stdout)
    for key in ("time", "time_ns", "dt_now", "utcnow", "gmtime", "wall_at"):
        assert abs(got[key] - (real + STALE)) < 30, (key, got)
    assert abs(ts(got["rfc3339"]) - (real + STALE)) < 30
    assert 80 <= got["retry_after"] <= 90  # an HTTP date is compared with the same shifted clock
    assert before_mono <= got["mono"] <= time.monotonic()  # monotonic time is untouched


@pytest.mark.slow
def test_clips_queued_under_a_stale_unsynchronised_clock_survive_a_reboot_with_the_clock_corrected(
        tmp_path: Path) -> None:
    """Four clips queued while the server was unreachable, on a clock 400 days behind and not yet
    synchronised; 40 s later the device reboots, NTP has corrected the clock: the clips are 40 s old,
    not 400 days, and go out. (Before: all four dropped as max_age at the first start.)"""
    require_boots(tmp_path)
    cids = ["CID-0A0A0A01", "CID-0A0A0A02", "CID-0A0A0A03", "CID-0A0A0A04"]
    video = make_video(tmp_path / "line.mp4", seconds=10, size=(480, 270),
                       codes=[(c, 0.5 + 2.2 * i, 1.5 + 2.2 * i) for i, c in enumerate(cids)])
    shift = tmp_path / "shift"
    set_shift(shift, STALE - 40)
    cfg = tmp_path / "config.yaml"
    down = f"http://127.0.0.1:{free_port()}/cid"  # nothing listens: the clips stay queued
    spool = tmp_path / "spool"
    cfg.write_text(f"device_id: pi-7\nupload:\n  url: {down}\nspool:\n  dir: {spool}\n  min_free_bytes: 0\n"
                   "  max_age_s: 604800\n", encoding="utf-8")
    first, second = Boot(tmp_path), Boot(tmp_path)
    res = subprocess.run(first.argv(agent_argv("replay", "--config", str(cfg), "--drain-timeout", "1", str(video))),
                         env=agent_env(shift, synced=False), capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, check=False)
    assert res.returncode == 75, res.stderr[-3000:]
    assert len(list((spool / "clips").glob("*.mp4"))) == 4

    set_shift(shift, 0.0)  # the next boot: NTP has set the clock
    with ReceiverProcess(tmp_path / "receiver") as receiver:
        cfg.write_text(cfg.read_text().replace(down, receiver.cid_url))
        res = subprocess.run(second.argv(agent_argv("spool", "flush", "--config", str(cfg), "--timeout", "30")),
                             env=agent_env(shift, synced=True), capture_output=True, text=True, cwd=tmp_path,
                             timeout=120, check=False)
        events = receiver.events()
    dropped = res.stderr.count("reason=max_age")
    print(f"\nstale clock, reboot: {dropped} of 4 clips dropped as max_age, {len(events)} delivered")
    assert res.returncode == 0, res.stderr[-3000:]
    assert dropped == 0 and sorted(e["cid"] for e in events) == cids
    for e in events:
        meta = e["metadata"]
        assert meta["clock"]["synchronized"] is False  # stamped before NTP: the receiver can tell
        assert abs(ts(meta["detected_at"]) - (time.time() + STALE)) < 600  # on the clock the device had then
        assert e["sha256_ok"] is True


@pytest.mark.slow
def test_a_clock_step_while_running_puts_every_later_clip_on_the_new_clock(tmp_path: Path) -> None:
    """The daemon starts 400 days behind; NTP steps the clock after the first clip: the next clips'
    detected_at, clip times and last_detected_at are on the corrected clock at once, in the same source
    session. (Before: a wall-clock anchor taken per session kept them 400 days behind.)"""
    # played in real time: the first clip (detected at 2.6 s) is delivered by ~5.5 s, the next labels come
    # at 8.4 s and 10 s, after the step
    cids = ["CID-57E9A001", "CID-57E9A002", "CID-57E9A003"]
    video = make_video(tmp_path / "line.mp4", seconds=13, size=(480, 270),
                       codes=[(cids[0], 2.6, 3.4), (cids[1], 8.4, 9.2), (cids[2], 10.0, 10.8)])
    shift = tmp_path / "shift"
    set_shift(shift, STALE)
    with ReceiverProcess(tmp_path / "receiver") as receiver:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"device_id: pi-7\nsource:\n  kind: file\n  path: {video}\n  realtime: true\n"
                       f"upload:\n  url: {receiver.cid_url}\n  backoff_base_s: 0.2\n"
                       f"spool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\nhttp:\n  port: {free_port()}\n",
                       encoding="utf-8")
        with (tmp_path / "run.log").open("wb") as log:
            proc = subprocess.Popen(agent_argv("run", "--config", str(cfg)), stderr=log,
                                    env=agent_env(shift, synced=False), cwd=tmp_path)
            try:
                deadline = time.monotonic() + 60
                while not receiver.events() and time.monotonic() < deadline:  # the first clip, old clock
                    time.sleep(0.2)
                assert receiver.events(), (tmp_path / "run.log").read_text()[-3000:]
                set_shift(shift, 0.0)
                stepped = time.time()
                assert proc.wait(90) == 0  # the file ends: a finished job
            finally:
                if proc.poll() is None:
                    proc.kill()
        events = sorted(receiver.events(), key=lambda e: e["metadata"]["detected_at"])
    assert [e["cid"] for e in events] == cids, events
    before, after = events[0]["metadata"], [e["metadata"] for e in events[1:]]
    assert abs(ts(before["detected_at"]) - (stepped + STALE)) < 60
    late = [m for m in after if abs(ts(m["detected_at"]) - stepped) > 60]
    print(f"\nclock stepped mid-run: {len(late)} of {len(after)} later clips still on the old clock")
    for m in after:
        for at in (m["detected_at"], m["clip"]["start_at"], m["clip"]["end_at"], m["detection"]["last_detected_at"]):
            assert abs(ts(at) - stepped) < 60, m
        assert ts(m["clip"]["start_at"]) <= ts(m["detected_at"]) <= ts(m["clip"]["end_at"])
