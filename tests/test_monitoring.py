"""The shipped monitoring/ folder: alert rules that promtool accepts and whose unit tests pass, and a
Grafana dashboard whose queries parse and use only metrics the agent declares."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.metrics import declared_names
from tests import promtool

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"
# series names in PromQL: edge_agent_* and process_*; `up` is Prometheus' own
SERIES = re.compile(r"\b((?:edge_agent|process)_[a-zA-Z0-9_]+)\b")
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["definition"]))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_every_metric_the_dashboard_and_alerts_use_is_declared() -> None:
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) > 20
    declared = declared_names()
    used: set[str] = set()
    for where, expr in exprs:
        names = set(SERIES.findall(expr))
        assert names or "up{" in expr, f"{where}: no agent metric in {expr!r}"
        missing = names - declared
        assert not missing, f"{where}: {sorted(missing)} not declared in edge_agent/metrics.py"
        used |= names
    # the dashboard shows the metrics a technician needs first
    for name in ("edge_agent_frames_total", "edge_agent_noreads_total", "edge_agent_events_total",
                 "edge_agent_spool_clips", "edge_agent_detection_to_delivery_seconds_bucket",
                 "process_resident_memory_bytes", "edge_agent_build_info"):
        assert name in used, name


def test_dashboard_has_unique_panel_ids_and_a_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dash["templating"]["list"])
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.slow
@promtool.needs_promtool
def test_promtool_accepts_the_alert_rules_and_their_unit_tests_pass() -> None:
    res = promtool.run("check", "rules", str(ALERTS))
    assert res.returncode == 0, res.stdout + res.stderr
    res = promtool.run("test", "rules", "alerts_test.yml", cwd=MONITORING)
    assert res.returncode == 0, res.stdout + res.stderr


@promtool.needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's variables given sample values)."""
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            continue  # a Grafana function, not PromQL
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    res = promtool.run("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
