"""monitoring/prometheus.yml and alerts.yml in a real Prometheus against a real agent: the scrape
with the web password works (instance relabelled to the host name), and a config push with a typo
fires EdgeAgentConfigReloadRefused naming the device, which clears once a good config is applied."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.receiver_fixture import free_port
from tests.test_live_reload import SAMPLE, start_run, wait_for_log

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
PROMETHEUS = shutil.which("prometheus")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt install prometheus)")]


def until(what: str, fn: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = fn()
        except requests.RequestException:
            got = None
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_the_shipped_scrape_config_and_the_refused_reload_alert_work_in_prometheus(tmp_path: Path) -> None:
    agent_port, prom_port = free_port(), free_port()
    (tmp_path / "http-password").write_text("s3cret\n")
    (tmp_path / "http-password").chmod(0o600)  # a secret file must be private, or the agent refuses it
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"device_id: line4-cam1\nsource:\n  kind: file\n  path: {SAMPLE}\n  realtime: true\n  loop: true\n"
                   f"spool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\n"
                   f"http:\n  port: {agent_port}\n  password_file: {tmp_path / 'http-password'}\n")
    (tmp_path / "config.d").mkdir()
    # the shipped file, pointed at this agent and evaluated every second instead of every minute
    prom = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    prom["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    prom["rule_files"] = [str(MONITORING / "alerts.yml")]
    [job] = prom["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [f"127.0.0.1:{agent_port}"]}])
    job["basic_auth"]["password_file"] = str(tmp_path / "http-password")
    del job["file_sd_configs"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(q: str) -> list[dict[str, Any]]:
        return list(requests.get(f"{api}/query", params={"query": q}, timeout=5).json()["data"]["result"])

    log = tmp_path / "run.log"
    agent = start_run(cfg, log, "--no-watch")
    server = subprocess.Popen([str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))  # noqa: SIM115
    try:
        at = wait_for_log(log, "ready: frames are flowing", timeout=60)
        [info] = until("edge_agent_info scraped", lambda: query("edge_agent_info"))
        assert info["metric"]["instance"] == "127.0.0.1" and info["metric"]["job"] == "edge-agent"
        assert info["metric"]["device_id"] == "line4-cam1"

        (tmp_path / "config.d" / "10-fleet.yaml").write_text("detector:\n  cooldwn_s: 3\n")
        agent.send_signal(signal.SIGHUP)
        at = wait_for_log(log, "reload refused", after=at, timeout=60)
        firing = until("the alert fires", lambda: query('ALERTS{alertname="EdgeAgentConfigReloadRefused",'
                                                         'alertstate="firing"}'))
        assert firing[0]["metric"]["device_id"] == "line4-cam1"

        (tmp_path / "config.d" / "10-fleet.yaml").write_text("detector:\n  cooldown_s: 3\n")
        agent.send_signal(signal.SIGHUP)
        wait_for_log(log, "config reloaded live", after=at, timeout=60)
        until("the alert clears", lambda: not query('ALERTS{alertname="EdgeAgentConfigReloadRefused"}'))
        [applied] = query('edge_agent_config_reloads_total{result="applied"}')
        assert applied["value"][1] == "1"
    finally:
        server.terminate()
        server.wait(30)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
