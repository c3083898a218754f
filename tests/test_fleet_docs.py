"""What the fleet documentation tells an operator to type works: every EDGE_AGENT__ variable the docs
show is a key the agent accepts, the Prometheus configuration in monitoring/ passes promtool, and the
Ansible example in fleet/ parses (its real run against a Debian root is fleet/test-playbook.sh)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_agent.config import ConfigError, parse_config
from tests import promtool

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "monitoring" / "README.md", *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "configs").iterdir()), *sorted((REPO / "systemd").iterdir()),
        *sorted(p for p in (REPO / "fleet").rglob("*") if p.is_file())]
ENV_ASSIGNMENT = re.compile(r"\b(EDGE_AGENT__[A-Z0-9_]+)=([^\s`'\"]+)")
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or shutil.which(
    "ansible-playbook")


def test_every_environment_override_the_docs_show_is_accepted() -> None:
    seen = []
    for doc in DOCS:
        for var, value in ENV_ASSIGNMENT.findall(doc.read_text(encoding="utf-8", errors="replace")):
            if "SECTION__KEY" in var or value.strip(".") == "" or value.startswith("<"):
                continue  # the form, not an example
            try:
                parse_config("", "<docs>", strict_source=False, env={var: value})
            except ConfigError as exc:
                pytest.fail(f"{doc.relative_to(REPO)}: {var}={value}: {exc}")
            seen.append(var)
    assert "EDGE_AGENT__HTTP__PORT" in seen and "EDGE_AGENT__UPLOAD__URL" in seen


@promtool.needs_promtool
def test_the_shipped_prometheus_configuration_passes_promtool() -> None:
    res = promtool.run("check", "config", "prometheus.yml", cwd=REPO / "monitoring")
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    [job] = cfg["scrape_configs"]
    assert job["job_name"] == "edge-agent"  # what alerts.yml and the dashboard select
    ports = {t.rsplit(":", 1)[1] for sc in job["static_configs"] for t in sc["targets"]}
    example_ports = {str(yaml.safe_load(p.read_text())["http"]["port"]) for p in (REPO / "configs").glob("*.yaml")
                     if "http" in yaml.safe_load(p.read_text())}
    assert ports == example_ports == {"9108"}


@pytest.mark.slow
@pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="ansible-core not installed (the test extra has it)")
def test_the_fleet_playbook_passes_ansible_syntax_check(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[edge_agents]\ndevice ansible_host=127.0.0.1\n")
    assert ANSIBLE_PLAYBOOK is not None
    res = subprocess.run([ANSIBLE_PLAYBOOK, "--syntax-check", "-i", str(inventory), "push-config.yml"],
                         cwd=REPO / "fleet", capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ANSIBLE_CONFIG": "ansible.cfg",
                              "ANSIBLE_LOCAL_TEMP": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_dashboard_has_a_per_device_table_of_the_fleets_vital_signs() -> None:
    dash = json.loads((REPO / "monitoring" / "grafana-dashboard.json").read_text())
    [table] = [p for p in dash["panels"] if p["type"] == "table" and p["title"] == "Devices"]
    exprs = " ".join(t["expr"] for t in table["targets"])
    for series in ("up{", "edge_agent_fps", "edge_agent_spool_clips", "edge_agent_last_delivery_timestamp_seconds",
                   "edge_agent_build_info", "edge_agent_info"):
        assert series in exprs, series
    assert all(t["format"] == "table" and t["instant"] for t in table["targets"])
    columns = table["transformations"][-1]["options"]["renameByName"]
    assert {"up", "fps", "queued", "last delivery", "config hash"} <= set(columns.values())
