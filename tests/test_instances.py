"""Several cameras on one device: two `edge-agent run` side by side, as edge-agent@line1 and
edge-agent@line2 would run them (own config, own $STATE_DIRECTORY, own http port), deliver
every clip of their own video to one real receiver; `edge-agent check` warns when configs in
one folder would share a spool, an http port or a device_id."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.service import instances
from edge_agent.service.instances import (
    clash_warning,
    clashes,
    instance_state_dir,
    load_instance,
    read_env_file,
    state_dir,
)
from tests import agent_process
from tests.media_factory import make_video
from tests.receiver_fixture import ReceiverProcess, free_port
from tests.test_daemon import NotifySocket

ROOT = Path(__file__).resolve().parent.parent
# each camera its own labels: a clip delivered under the other's device_id would show
CAMERAS = {"line1": ["CID-LINE1-A", "CID-LINE1-B"], "line2": ["CID-LINE2-A", "CID-LINE2-B"]}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --- two instances side by side ------------------------------------------------------------------


@pytest.mark.slow
def test_two_instances_side_by_side_each_deliver_their_own_clips(tmp_path: Path) -> None:
    etc, state_root = tmp_path / "etc", tmp_path / "var-lib"
    etc.mkdir()
    videos = {name: make_video(tmp_path / f"{name}.mp4", seconds=6, size=(320, 240), scale=4,
                               codes=[(cids[0], 1.0, 1.5), (cids[1], 3.0, 3.5)]) for name, cids in CAMERAS.items()}
    procs: dict[str, agent_process.AgentProcess] = {}
    notify: dict[str, NotifySocket] = {}
    with ReceiverProcess(tmp_path / "receiver") as receiver:
        for name, video in videos.items():
            # what an /etc/edge-agent/NAME.yaml for a camera holds: no spool.dir, the unit gives one; at the
            # camera's pace, so the two run at the same time
            cfg = write(etc, f"{name}.yaml", f"device_id: {name}\nsource:\n  kind: file\n  path: {video}\n"
                        f"  realtime: true\nupload:\n  url: {receiver.cid_url}\n  backoff_base_s: 0.2\n"
                        f"spool:\n  min_free_bytes: 0\nhttp:\n  port: {free_port()}\n")
            state = state_dir(cfg, state_root)  # StateDirectory=edge-agent/%i
            state.mkdir(parents=True)
            notify[name] = NotifySocket(tmp_path / f"{name}.notify")
            env = {**os.environ, "STATE_DIRECTORY": str(state), "NOTIFY_SOCKET": str(notify[name].path),
                   "WATCHDOG_USEC": "2000000", "PYTHONUNBUFFERED": "1"}
            with (tmp_path / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
                procs[name] = agent_process.popen(["run", "--config", str(cfg)],
                                                  stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            for name in CAMERAS:
                notify[name].wait_for("READY=1", 30)
            # a file source without loop ends the daemon once the video is read and its clips handed over
            rcs = {name: p.wait(90) for name, p in procs.items()}
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
        events = receiver.events()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in CAMERAS}
    assert rcs == {"line1": 0, "line2": 0}, logs
    assert clashes(etc / "line1.yaml", state_root) == []
    for name, cids in CAMERAS.items():
        got = sorted(e["cid"] for e in events if e["metadata"]["device_id"] == name)
        assert got == cids, (name, got, logs[name])
        spool = state_root / "edge-agent" / name / "spool"
        assert (spool / "queue.sqlite3").is_file() and not list((spool / "clips").iterdir()), name  # all delivered
        assert f"spool={spool}" in logs[name]
    assert len(events) == sum(len(cids) for cids in CAMERAS.values())
    assert all(e["sha256_ok"] for e in events)


# --- what each config gets as its unit runs it ---------------------------------------------------


def test_each_instance_gets_its_own_state_directory(tmp_path: Path) -> None:
    root = tmp_path / "var-lib"
    one = load_instance(write(tmp_path, "line1.yaml", "device_id: a\n"), root)
    single = load_instance(write(tmp_path, "config.yaml", "device_id: b\n"), root)
    assert (one.unit, one.spool_dir) == ("edge-agent@line1.service", root / "edge-agent" / "line1" / "spool")
    assert (single.unit, single.spool_dir) == ("edge-agent.service", root / "edge-agent" / "spool")


def test_distinct_configs_share_nothing(tmp_path: Path) -> None:
    write(tmp_path, "line1.yaml", "device_id: line1\nhttp:\n  port: 9101\n")
    write(tmp_path, "line2.yaml", "device_id: line2\nhttp:\n  port: 9102\n")
    write(tmp_path, "line3.yaml", "device_id: line3\n")  # no metrics
    write(tmp_path, "line4.yaml", "device_id: line4\n")
    assert clashes(tmp_path / "line1.yaml", tmp_path) == []
    assert clashes(tmp_path / "line3.yaml", tmp_path) == []
    assert clash_warning(tmp_path / "line3.yaml") is None


def test_a_shared_spool_dir_port_and_device_id_are_named(tmp_path: Path) -> None:
    spool = tmp_path / "shared"
    write(tmp_path, "line1.yaml", f"device_id: cam\nspool:\n  dir: {spool}\nhttp:\n  port: 9101\n")
    write(tmp_path, "line2.yaml", f"device_id: cam\nspool:\n  dir: {spool}/\nhttp:\n  port: 9101\n")
    assert clashes(tmp_path / "line1.yaml", tmp_path) == [
        ("spool", str(spool), "line2.yaml"), ("http port", "9101", "line2.yaml"), ("device_id", "cam", "line2.yaml")]


def test_a_spool_dir_inside_another_instances_state_directory_clashes(tmp_path: Path) -> None:
    # the single unit's config points its spool where edge-agent@line1 keeps its own
    write(tmp_path, "config.yaml", f"device_id: a\nspool:\n  dir: {tmp_path}/edge-agent/line1/spool\n")
    write(tmp_path, "line1.yaml", "device_id: b\n")
    spool = f"{tmp_path}/edge-agent/line1/spool"
    assert clashes(tmp_path / "line1.yaml", tmp_path) == [("spool", spool, "config.yaml")]


def test_the_per_instance_env_file_counts(tmp_path: Path) -> None:
    write(tmp_path, "line1.yaml", "device_id: a\nhttp:\n  port: 9101\n")
    write(tmp_path, "line2.yaml", "device_id: b\nhttp:\n  port: 9102\n")
    assert clashes(tmp_path / "line1.yaml", tmp_path) == []
    write(tmp_path, "line2.env", "# per camera\nEDGE_AGENT__HTTP__PORT=9101\nEDGE_AGENT__DEVICE_ID='a'\n")
    assert clashes(tmp_path / "line1.yaml", tmp_path) == [("http port", "9101", "line2.yaml"),
                                                          ("device_id", "a", "line2.yaml")]
    # and for the single unit, its edge-agent.env
    write(tmp_path, "config.yaml", "device_id: c\n")
    write(tmp_path, "edge-agent.env", f'EDGE_AGENT__SPOOL__DIR="{tmp_path}/edge-agent/line1/spool"\n')
    assert ("spool", f"{tmp_path}/edge-agent/line1/spool", "config.yaml") in clashes(tmp_path / "line1.yaml", tmp_path)


def test_the_shells_environment_is_not_the_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT__HTTP__PORT", "9100")  # the technician's shell, not any unit's
    write(tmp_path, "line1.yaml", "device_id: a\n")
    write(tmp_path, "line2.yaml", "device_id: b\n")
    assert clashes(tmp_path / "line1.yaml", tmp_path) == []


@pytest.mark.parametrize(("host1", "host2", "clash"), [
    ("127.0.0.1", "127.0.0.1", True), ("0.0.0.0", "127.0.0.1", True), ("127.0.0.1", "10.0.0.5", False)])
def test_a_port_clashes_on_the_same_address_or_a_wildcard(tmp_path: Path, host1: str, host2: str,
                                                          clash: bool) -> None:
    write(tmp_path, "line1.yaml", f"device_id: a\nhttp:\n  port: 9101\n  host: {host1}\n")
    write(tmp_path, "line2.yaml", f"device_id: b\nhttp:\n  port: 9101\n  host: '{host2}'\n")
    assert bool(clashes(tmp_path / "line1.yaml", tmp_path)) is clash


def test_a_sibling_that_does_not_load_is_left_to_its_own_check(tmp_path: Path) -> None:
    write(tmp_path, "line1.yaml", "device_id: a\n")
    write(tmp_path, "line2.yaml", "device_id: [unclosed\n")
    write(tmp_path, "line3.yaml", "device_id: a\nbogus: 1\n")
    assert clashes(tmp_path / "line1.yaml", tmp_path) == []


def test_env_file_format(tmp_path: Path) -> None:
    env = write(tmp_path, "x.env", "# c\n; c\n\nA=1\n B = two words \nC=\"q v\"\nD='s'\nnot a pair\nE=\n")
    assert read_env_file(env) == {"A": "1", "B": "two words", "C": "q v", "D": "s", "E": ""}
    assert read_env_file(tmp_path / "missing.env") == {}


# --- hand-run commands on an instance's config ---------------------------------------------------


def test_hand_run_commands_on_an_instance_config_use_that_instances_spool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    etc = tmp_path / "etc-edge-agent"
    etc.mkdir()
    monkeypatch.setattr(instances, "CONFIG_DIR", etc)
    monkeypatch.setattr(instances, "STATE_ROOT", tmp_path / "var-lib")
    monkeypatch.setenv("STATE_DIRECTORY", "placeholder")
    monkeypatch.delenv("STATE_DIRECTORY")  # restored after the test; unset now, as in a shell
    write(etc, "line1.yaml", "device_id: a\n")
    write(etc, "config.yaml", "device_id: b\n")
    assert instance_state_dir(etc / "config.yaml") is None  # the single unit's: unchanged rules
    assert instance_state_dir(tmp_path / "line1.yaml") is None  # not in /etc/edge-agent
    assert main(["config", "show", "--json", "--config", str(etc / "line1.yaml")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["spool"]["dir"] == str(tmp_path / "var-lib" / "edge-agent" / "line1" / "spool")


def test_under_systemd_the_units_state_directory_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(instances, "CONFIG_DIR", tmp_path)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "given"))
    write(tmp_path, "line1.yaml", "device_id: a\n")
    assert main(["config", "show", "--json", "--config", str(tmp_path / "line1.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["spool"]["dir"] == str(tmp_path / "given" / "spool")


# --- edge-agent check ----------------------------------------------------------------------------


def check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict]:
    """`edge-agent check` as typed, in this process: the warning comes from the configs beside it."""
    common = ["check", "--config", str(config), "--frames", "10"]
    capsys.readouterr()
    rc = main(common)
    text = "".join(capsys.readouterr())
    assert main([*common, "--json"]) == rc
    return rc, text, json.loads(capsys.readouterr().out)


def test_check_warns_about_a_shared_port_and_passes_without(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a small camera of its own: what is checked is the configs beside each other, not the picture
    video = make_video(tmp_path / "qr.mp4", seconds=1, size=(320, 240), codes=[("CID-LINE-1", 0.0, 1.0)], scale=4)
    source = f"source:\n  kind: file\n  path: {video}\n"
    cfg = write(tmp_path, "line1.yaml", f"device_id: a\n{source}spool:\n  dir: {tmp_path / 's1'}\n"
                "  min_free_bytes: 0\nhttp:\n  port: 9101\n")
    write(tmp_path, "line2.yaml", f"device_id: b\n{source}spool:\n  dir: {tmp_path / 's2'}\nhttp:\n  port: 9102\n")
    rc, out, js = check(cfg, capsys)
    assert rc == 0 and "WARN" not in out, out
    assert "instances" not in [r["name"] for r in js["results"]]

    write(tmp_path, "line2.env", "EDGE_AGENT__HTTP__PORT=9101\n")
    rc, out, js = check(cfg, capsys)
    assert rc == 0, out  # a warning, not a failure: the camera itself works
    warn = [ln for ln in out.splitlines() if ln.startswith("WARN")]
    assert warn == ["WARN  instances line1.yaml (edge-agent@line1.service) shares http port 9101 with line2.yaml"]
    hint = out.splitlines()[out.splitlines().index(warn[0]) + 1]
    assert hint.strip() == f"-> two cameras on one device cannot share these: give each config in {tmp_path} " \
        "an http.port of its own (or none)"
    (res,) = [r for r in js["results"] if r["name"] == "instances"]
    assert res["status"] == "WARN" and js["ok"] is True
