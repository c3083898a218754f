"""What a fleet sees of a device: `edge_agent_info` names it and fingerprints its effective config; a
config push with a typo is refused on reload and shows in `edge_agent_config_reloads_total`, the
last-reload gauge and /healthz (a status, never the error); the next good push is applied and changes
the fingerprint; the exposition stays clean for `promtool check metrics`."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import requests

from tests import agent_process, promtool
from tests.receiver_fixture import free_port
from tests.test_live_reload import SAMPLE, start_run, wait_for_log
from tests.test_metrics_server import parse_exposition

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse_exposition(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


def info(port: int) -> dict[str, str]:
    [labels] = [dict(lbl) for (name, lbl) in scrape(port) if name == "edge_agent_info"]
    return labels


def shown_sha(cfg: Path) -> str:
    res = agent_process.run(["config", "show", "--json", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    return str(json.loads(res.stdout)["config_sha256"])


def test_a_refused_push_shows_in_metrics_and_healthz_and_a_good_one_changes_the_config_hash(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"device_id: line4-cam1\nsource:\n  kind: file\n  path: {SAMPLE}\n  realtime: true\n  loop: true\n"
                   f"spool:\n  dir: {tmp_path / 'spool'}\n  min_free_bytes: 0\nhttp:\n  port: {port}\n")
    fleet = tmp_path / "config.d"
    fleet.mkdir()
    (fleet / "10-fleet.yaml").write_text("site: plant-a\n")
    log = tmp_path / "run.log"
    proc = start_run(cfg, log, "--no-watch")  # only SIGHUP reloads: each step below is one reload
    try:
        at = wait_for_log(log, "ready: frames are flowing", timeout=60)
        first = info(port)
        assert first == {"device_id": "line4-cam1", "site": "plant-a", "source_kind": "file",
                         "config_sha256": shown_sha(cfg)}
        m = scrape(port)
        assert m[("edge_agent_config_reloads_total", (("result", "refused"),))] == 0
        assert m[("edge_agent_config_last_reload_successful", ())] == 1
        started = m[("edge_agent_config_last_reload_success_timestamp_seconds", ())]

        (fleet / "20-push.yaml").write_text("detector:\n  cooldwn_s: 3\n")  # the typo
        proc.send_signal(signal.SIGHUP)
        at = wait_for_log(log, "reload refused, keeping the running config: ", after=at, timeout=60)
        m = scrape(port)
        assert m[("edge_agent_config_reloads_total", (("result", "refused"),))] == 1
        assert m[("edge_agent_config_reloads_total", (("result", "applied"),))] == 0
        assert m[("edge_agent_config_last_reload_successful", ())] == 0
        assert m[("edge_agent_config_last_reload_success_timestamp_seconds", ())] == started
        assert info(port) == first
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
        assert health["config_reload"] == "refused" and health["status"] == "ok"
        assert "cooldwn" not in json.dumps(health)
        assert f"{fleet / '20-push.yaml'}:2:3: detector.cooldwn_s: unknown key" in log.read_text()

        (fleet / "20-push.yaml").write_text("detector:\n  cooldown_s: 3\n")  # the fix
        proc.send_signal(signal.SIGHUP)
        wait_for_log(log, "config reloaded live: detector.cooldown_s 5 -> 3", after=at, timeout=60)
        m = scrape(port)
        assert m[("edge_agent_config_reloads_total", (("result", "applied"),))] == 1
        assert m[("edge_agent_config_last_reload_successful", ())] == 1
        assert m[("edge_agent_config_last_reload_success_timestamp_seconds", ())] > started
        now = info(port)
        assert now["config_sha256"] != first["config_sha256"] and now["config_sha256"] == shown_sha(cfg)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["config_reload"] == "applied"
        assert ("edge_agent_clock_synchronized", ()) in m
        if promtool.PROMTOOL:
            promtool.check_metrics(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
