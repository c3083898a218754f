"""The systemd units: edge-agent.service (one camera) and edge-agent@.service (one instance per
camera). systemd itself judges them (`systemd-analyze verify`, `security --offline`,
`systemd-sysusers`); the few keys whose values the code depends on are checked against the code;
and the template is the single unit line for line apart from the instance-specific lines, so
hardening added to one and forgotten in the other fails here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.cli import build_parser
from edge_agent.config import EXIT_CONFIG
from edge_agent.delivery.credentials import CREDENTIAL_NAME
from edge_agent.service import instances
from edge_agent.service.daemon import STOP_BUDGET_S

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
SINGLE = SYSTEMD / "edge-agent.service"
TEMPLATE = SYSTEMD / "edge-agent@.service"
JETSON = SYSTEMD / "jetson.conf"
SYSUSERS = SYSTEMD / "edge-agent.sysusers"
EXEC = "/opt/edge-agent/venv/bin/edge-agent"
INSTANCE = "line1"
# (unit file, the name it is installed and verified under, the instance name or "")
UNITS = {"single": (SINGLE, "edge-agent.service", ""),
         "template": (TEMPLATE, f"edge-agent@{INSTANCE}.service", INSTANCE)}
# The only lines in which the template may differ from the single unit: (section, key) -> (single, template)
INSTANCE_LINES = {
    ("Unit", "Description"): ("edge-agent: ", "edge-agent %i: "),
    ("Service", "ExecStart"): ("--config /etc/edge-agent/config.yaml", "--config /etc/edge-agent/%i.yaml"),
    ("Service", "EnvironmentFile"): ("/etc/edge-agent/edge-agent.env", "/etc/edge-agent/%i.env"),
    ("Service", "StateDirectory"): ("edge-agent", "edge-agent/%i"),
}
CEILING = 2.5  # `systemd-analyze security` exposure: 10 is an unsandboxed root service; both units score 1.9

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (apt-get install systemd)")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """systemd's INI dialect: sections, repeated keys kept in order, # and ; comments, `\\` continuations."""
    sections: Unit = {}
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


def expand(value: str, instance: str) -> str:
    """The specifiers the units use: %i (the instance name) and %% (a literal %)."""
    unknown = set(re.findall(r"%(.)", value.replace("%%", ""))) - {"i"}
    assert not unknown, f"specifier %{unknown.pop()} in {value!r}: teach this test what systemd makes of it"
    return value.replace("%i", instance).replace("%%", "%")


def one(unit: Unit, section: str, key: str, instance: str = "") -> str:
    (value,) = unit[section][key]
    return expand(value, instance)


@pytest.fixture(scope="module", params=list(UNITS))
def unit(request: pytest.FixtureRequest) -> tuple[Unit, str]:
    """Each unit, parsed, with the instance name it is checked as."""
    path, _name, instance = UNITS[request.param]
    return parse_unit(path.read_text()), instance


# --- the template is the single unit, per instance -----------------------------------------------


def test_the_template_differs_from_the_single_unit_only_in_the_instance_lines() -> None:
    single, template = parse_unit(SINGLE.read_text()), parse_unit(TEMPLATE.read_text())
    rendered = {section: {key: list(values) for key, values in keys.items()} for section, keys in single.items()}
    for (section, key), (old, new) in INSTANCE_LINES.items():
        values = rendered[section][key]
        assert any(old in v for v in values), f"{section}/{key}: {old!r} is no longer in the single unit"
        rendered[section][key] = [v.replace(old, new) for v in values]
    assert rendered == template  # a key added, dropped or changed in one unit only shows up here


def test_every_instance_line_names_the_instance() -> None:
    template = parse_unit(TEMPLATE.read_text())
    for section, key in INSTANCE_LINES:
        assert all("%i" in v for v in template[section][key]), (section, key)
    lines = [(s, k) for s, keys in template.items() for k, vs in keys.items() if any("%i" in v for v in vs)]
    assert set(lines) == set(INSTANCE_LINES)


# --- keys the code depends on, in both units -----------------------------------------------------


def test_notify_and_watchdog(unit: tuple[Unit, str]) -> None:
    u, _ = unit
    assert one(u, "Service", "Type") == "notify"  # READY=1 once frames flow, or the camera is found away
    assert one(u, "Service", "NotifyAccess") == "main"  # not the camera command the agent starts
    # the watchdog is fed while capture keeps within its timeouts (a camera away is retried in process):
    # a stalled read and its reopen (stall_s, then open_timeout_s) fit well inside it
    watchdog = float(one(u, "Service", "WatchdogSec"))
    assert watchdog > const.SOURCE_STALL_S + const.SOURCE_OPEN_TIMEOUT_S
    assert float(one(u, "Service", "TimeoutStartSec")) > const.SOURCE_OPEN_TIMEOUT_S


def test_restart_policy(unit: tuple[Unit, str]) -> None:
    u, _ = unit
    assert one(u, "Service", "Restart") == "on-failure"
    assert one(u, "Service", "RestartPreventExitStatus") == str(EXIT_CONFIG) == "78"  # a bad config: no loop
    # StartLimitIntervalSec= in [Service] is ignored by current systemd: it must be in [Unit]
    assert one(u, "Unit", "StartLimitIntervalSec") == "0" and "StartLimitIntervalSec" not in u["Service"]
    assert float(one(u, "Service", "TimeoutStopSec")) >= STOP_BUDGET_S + 3  # room for the shutdown budget


def test_exec_start_and_reload_are_what_the_cli_accepts(unit: tuple[Unit, str]) -> None:
    u, instance = unit
    binary, *argv = one(u, "Service", "ExecStart", instance).split()
    assert binary == EXEC
    args = build_parser().parse_args(argv)
    assert args.command == "run" and callable(args.func)
    expected = instances.CONFIG_DIR / (f"{instance}.yaml" if instance else "config.yaml")
    assert Path(args.config) == expected
    assert one(u, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"  # the daemon reloads on SIGHUP
    # the environment file is the one `edge-agent check` reads for this config's clash warning
    assert one(u, "Service", "EnvironmentFile", instance) == f"-{instances.env_file(expected)}"


def test_state_directory_is_where_the_spool_goes(unit: tuple[Unit, str], monkeypatch: pytest.MonkeyPatch) -> None:
    u, instance = unit
    state = Path("/var/lib") / one(u, "Service", "StateDirectory", instance)  # what systemd sets for it
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    assert const.default_spool_dir() == str(state / "spool")
    config = instances.CONFIG_DIR / (f"{instance}.yaml" if instance else "config.yaml")
    assert instances.state_dir(config, Path("/var/lib")) == state  # what `check` assumes of the unit
    assert instances.instance_state_dir(config) == (state if instance else None)  # what hand-run commands use


def test_cameras_and_network_stay_reachable(unit: tuple[Unit, str]) -> None:
    s = unit[0]["Service"]
    assert one(unit[0], "Service", "SupplementaryGroups") == "video"
    assert "char-video4linux rw" in s["DeviceAllow"]
    assert {"char-media rw", "char-dma_heap rw", "char-vchiq rw"} <= set(s["DeviceAllow"])  # Pi camera stack
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # each of these would hide the cameras, the video group, or break GStreamer/libffi code generation
    for breaking in ("PrivateDevices", "PrivateUsers", "MemoryDenyWriteExecute", "PrivateNetwork", "IPAddressDeny"):
        assert breaking not in s, breaking


@pytest.mark.parametrize("path", [SINGLE, TEMPLATE], ids=["single", "template"])
def test_the_upload_token_credential_is_documented_with_the_name_the_agent_reads(path: Path) -> None:
    text = path.read_text()
    assert re.search(rf"^#\s*LoadCredential={CREDENTIAL_NAME}:/etc/edge-agent/{CREDENTIAL_NAME}$", text, re.M)


def test_jetson_drop_in_relaxes_only_what_nvargus_needs() -> None:
    d = parse_unit(JETSON.read_text())
    assert d["Service"] == {"PrivateTmp": ["no"], "DeviceAllow": [""], "DevicePolicy": ["auto"]}
    assert d["Unit"]["After"] == ["nvargus-daemon.service"]


# --- systemd's own checks ------------------------------------------------------------------------


def install(tmp_path: Path, which: str, *, jetson: bool = False, edits: tuple[tuple[str, str], ...] = ()) -> Path:
    """Copy a unit into a folder under the name systemd would load it by (an instance for the
    template), pointing ExecStart at a binary every machine has: verify checks that it exists."""
    src, name, _instance = UNITS[which]
    text = src.read_text().replace(EXEC, "/bin/true")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    unit = tmp_path / name
    unit.write_text(text)
    if jetson:
        (tmp_path / f"{name}.d").mkdir()
        shutil.copy(JETSON, tmp_path / f"{name}.d" / "jetson.conf")
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, check=False, timeout=60)


@needs_analyze
@pytest.mark.parametrize("jetson", [False, True], ids=["plain", "jetson"])
@pytest.mark.parametrize("which", list(UNITS))
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path, which: str, jetson: bool) -> None:
    unit = install(tmp_path, which, jetson=jetson)
    res = analyze("verify", str(unit))
    ours = [ln for ln in res.stderr.splitlines() if str(tmp_path) in ln or "edge-agent" in ln]
    assert res.returncode == 0 and not ours, res.stderr


@needs_analyze
@pytest.mark.parametrize("which", list(UNITS))
def test_verify_would_catch_a_typo(tmp_path: Path, which: str) -> None:
    """The check above can fail: a misspelt directive is reported (as a warning, exit status 0)."""
    res = analyze("verify", str(install(tmp_path, which, edits=(("WatchdogSec=", "WatchDogSec="),))))
    assert "Unknown key 'WatchDogSec'" in res.stderr


def exposure(tmp_path: Path, which: str, edits: tuple[tuple[str, str], ...] = ()) -> float:
    """`systemd-analyze security --offline=true`: the overall exposure, 0 (locked down) to 10."""
    unit = install(tmp_path, which, edits=edits)
    res = analyze("security", "--offline=true", str(unit))
    m = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([\d.]+)", res.stdout + res.stderr)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot score a unit offline: {res.stderr.strip()[:200]}")
    return float(m[1])


@needs_analyze
@pytest.mark.parametrize("which", list(UNITS))
def test_sandbox_exposure_stays_low(tmp_path: Path, which: str) -> None:
    assert exposure(tmp_path, which) <= CEILING


@needs_analyze
def test_the_exposure_ceiling_can_be_crossed(tmp_path: Path) -> None:
    """The ceiling means something: without its system-call filter, capability limits, namespace
    restrictions and read-only file system the same unit scores above it."""
    loosened = tuple((line, "") for line in ("SystemCallFilter=@system-service\n", "CapabilityBoundingSet=\n",
                                             "RestrictNamespaces=yes\n", "ProtectSystem=strict\n"))
    assert exposure(tmp_path, "single", loosened) > CEILING


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


def test_documentation_is_the_readme_the_package_installs(unit: tuple[Unit, str]) -> None:
    """No address outside the repository: the README that the .deb puts in its doc folder."""
    (doc,) = unit[0]["Unit"]["Documentation"]
    assert doc == "file:/usr/share/doc/cid-edge-agent/README.md"
