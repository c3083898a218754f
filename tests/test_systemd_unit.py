"""The systemd unit carries the service contract (Type=notify, watchdog, restart policy, user,
directories, hardening that keeps cameras and the network), agrees with the code it starts, and
passes systemd's own checks: `systemd-analyze verify`, `security --offline`, `systemd-sysusers`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.cli import build_parser
from edge_agent.config import EXIT_CONFIG
from edge_agent.credentials import CREDENTIAL_NAME
from edge_agent.daemon import STOP_BUDGET_S

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-agent.service"
JETSON = ROOT / "systemd" / "jetson.conf"
SYSUSERS = ROOT / "systemd" / "edge-agent.sysusers"
EXEC = "/opt/edge-agent/venv/bin/edge-agent"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (apt-get install systemd)")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: sections, repeated keys kept in order, # and ; comments, `\\` continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


SERVICE = {
    "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "on-failure", "RestartSec": "5",
    "RestartPreventExitStatus": str(EXIT_CONFIG), "ExecReload": "/bin/kill -HUP $MAINPID",
    "User": "edge-agent", "Group": "edge-agent", "SupplementaryGroups": "video",
    "StateDirectory": "edge-agent", "ConfigurationDirectory": "edge-agent",
    "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes", "LockPersonality": "yes",
    "RestrictRealtime": "yes", "SystemCallArchitectures": "native", "DevicePolicy": "closed",
    "KillSignal": "SIGTERM", "TimeoutStopSec": "20", "Environment": "PYTHONUNBUFFERED=1",
}


@pytest.mark.parametrize(("key", "value"), SERVICE.items(), ids=list(SERVICE))
def test_service_directive(unit: dict[str, dict[str, list[str]]], key: str, value: str) -> None:
    assert unit["Service"].get(key) == [value]


def test_restart_for_ever_is_set_in_the_unit_section(unit: dict[str, dict[str, list[str]]]) -> None:
    # StartLimitIntervalSec= in [Service] is ignored by current systemd: it must be in [Unit]
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert "StartLimitIntervalSec" not in unit["Service"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_exec_start_is_a_command_the_cli_accepts(unit: dict[str, dict[str, list[str]]]) -> None:
    (cmd,) = unit["Service"]["ExecStart"]
    binary, *argv = cmd.split()
    assert binary == EXEC
    assert argv == ["run", "--config", "/etc/edge-agent/config.yaml"]
    args = build_parser().parse_args(argv)
    assert args.command == "run" and args.config == "/etc/edge-agent/config.yaml" and callable(args.func)


def test_stop_timeout_leaves_room_for_the_daemons_shutdown_budget(unit: dict[str, dict[str, list[str]]]) -> None:
    assert float(unit["Service"]["TimeoutStopSec"][0]) >= STOP_BUDGET_S + 3


def test_state_directory_is_where_the_spool_goes(unit: dict[str, dict[str, list[str]]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (state,) = unit["Service"]["StateDirectory"]
    monkeypatch.setenv("STATE_DIRECTORY", f"/var/lib/{state}")  # what systemd sets for StateDirectory=
    assert const.default_spool_dir() == "/var/lib/edge-agent/spool"


def test_cameras_and_network_stay_reachable(unit: dict[str, dict[str, list[str]]]) -> None:
    s = unit["Service"]
    assert "char-video4linux rw" in s["DeviceAllow"]
    assert {"char-media rw", "char-dma_heap rw", "char-vchiq rw"} <= set(s["DeviceAllow"])  # Pi camera stack
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # each of these would hide the cameras, the video group, or break GStreamer/libffi code generation
    for breaking in ("PrivateDevices", "PrivateUsers", "MemoryDenyWriteExecute", "PrivateNetwork", "IPAddressDeny"):
        assert breaking not in s, breaking


def test_the_upload_token_credential_is_documented_with_the_name_the_agent_reads() -> None:
    text = UNIT.read_text()
    assert re.search(rf"^#\s*LoadCredential={CREDENTIAL_NAME}:/etc/edge-agent/{CREDENTIAL_NAME}$", text, re.M)


def test_jetson_drop_in_relaxes_only_what_nvargus_needs() -> None:
    d = parse_unit(JETSON.read_text())
    assert d["Service"] == {"PrivateTmp": ["no"], "DeviceAllow": [""], "DevicePolicy": ["auto"]}
    assert d["Unit"]["After"] == ["nvargus-daemon.service"]


def _verify_copy(tmp_path: Path, with_drop_in: bool) -> subprocess.CompletedProcess[str]:
    unit = tmp_path / "edge-agent.service"
    # verify checks that ExecStart's binary exists: point it at one every machine has
    unit.write_text(UNIT.read_text().replace(EXEC, "/bin/true"))
    if with_drop_in:
        (tmp_path / "edge-agent.service.d").mkdir()
        shutil.copy(JETSON, tmp_path / "edge-agent.service.d" / "jetson.conf")
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False,
                          timeout=60)


@needs_analyze
@pytest.mark.parametrize("with_drop_in", [False, True], ids=["unit", "unit+jetson"])
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path, with_drop_in: bool) -> None:
    res = _verify_copy(tmp_path, with_drop_in)
    ours = [ln for ln in res.stderr.splitlines() if str(tmp_path) in ln or "edge-agent" in ln]
    assert res.returncode == 0 and not ours, res.stderr


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace(EXEC, "/bin/true").replace("WatchdogSec=", "WatchDogSec="))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False,
                         timeout=60)
    assert "WatchDogSec" in res.stderr


@needs_analyze
def test_sandbox_exposure_stays_low(tmp_path: Path) -> None:
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace(EXEC, "/bin/true"))
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                         text=True, check=False, timeout=60)
    m = re.search(r"Overall exposure level for edge-agent.service: ([\d.]+)", res.stdout + res.stderr)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot score a unit offline: {res.stderr.strip()[:200]}")
    assert float(m[1]) <= 3.0, res.stdout  # 10 is an unsandboxed root service; this unit scores ~1.9


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_the_user_in_group_video(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\n")
    res = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True,
                         check=False, timeout=60)
    if res.returncode != 0 and "ermission" in res.stderr:
        pytest.skip(f"systemd-sysusers needs privileges here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    user = next(ln.split(":") for ln in (etc / "passwd").read_text().splitlines() if ln.startswith("edge-agent:"))
    assert user[5] == "/var/lib/edge-agent" and user[6].endswith("nologin")
    video = next(ln for ln in (etc / "group").read_text().splitlines() if ln.startswith("video:"))
    assert "edge-agent" in video.split(":")[3].split(",")
