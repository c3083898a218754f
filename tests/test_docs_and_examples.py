"""The generated key reference and schema match the code, every example config validates, and the
systemd unit carries what the service needs and passes `systemd-analyze verify`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.config_cli import reference_markdown, schema

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "run `edge-agent config reference` and commit docs/"


def test_config_reference_is_current() -> None:
    assert (ROOT / "docs" / "config-reference.md").read_text() == reference_markdown(), REGENERATE


def test_config_schema_is_current() -> None:
    assert json.loads((ROOT / "docs" / "config.schema.json").read_text()) == schema(), REGENERATE


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_validates_and_points_editors_at_the_schema(path: Path) -> None:
    load_config(path, env={})
    assert path.read_text().startswith("# yaml-language-server: $schema=../docs/config.schema.json")


def test_every_kind_of_device_has_an_example() -> None:
    kinds = {load_config(p, env={}).source.kind for p in (ROOT / "configs").glob("*.yaml")}
    assert kinds == {"file", "v4l2", "url", "pipe"}
    names = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {"pi-csi.yaml", "jetson-csi.yaml", "usb-webcam.yaml", "rtsp-camera.yaml", "replay.yaml"} <= names


UNIT = ROOT / "systemd" / "edge-agent.service"


def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_has_the_service_contract() -> None:
    d = unit_directives()
    want = {"Type": "notify", "WatchdogSec": "30", "Restart": "on-failure", "RestartSec": "5",
            "StartLimitIntervalSec": "0", "RestartPreventExitStatus": "78", "User": "edge-agent",
            "SupplementaryGroups": "video", "StateDirectory": "edge-agent", "ConfigurationDirectory": "edge-agent",
            "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "KillSignal": "SIGTERM"}
    for key, value in want.items():
        assert d.get(key) == [value], key
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "run --config /etc/edge-agent/config.yaml" in d["ExecStart"][0]
    assert float(d["TimeoutStopSec"][0]) > 15  # SIGTERM budget is 15 s


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "edge-agent.service"
    # verify checks that ExecStart exists: point it at a binary every machine has
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", "/bin/true"))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    errors = [ln for ln in res.stderr.splitlines() if "edge-agent.service" in ln]
    assert res.returncode == 0 and not errors, res.stderr
