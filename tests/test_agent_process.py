"""The forked agent processes the suite starts (tests/agent_process.py) are what `python -m edge_agent.cli`
would be: the environment, working directory, arguments, output and exit code they are given, signals
acting on their own pid. Tests that use them rely on each of these."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import agent_process


def test_a_forked_command_gets_its_environment_directory_and_arguments_and_exits_with_its_code(
        tmp_path: Path) -> None:
    (tmp_path / "rel.yaml").write_text("device_id: from-file\n", encoding="utf-8")
    env = {**os.environ, "EDGE_AGENT__DETECTOR__COOLDOWN_S": "7.5"}
    res = agent_process.run(["config", "show", "--json", "--config", "rel.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)["config"]
    assert shown["device_id"] == "from-file"  # a path relative to the directory it was given
    assert shown["detector"]["cooldown_s"] == 7.5  # the environment it was given, read as it starts
    bad = agent_process.run(["config", "validate", "missing.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    real = subprocess.run([sys.executable, "-m", "edge_agent.cli", "config", "validate", "missing.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert (bad.returncode, bad.stdout, bad.stderr) == (real.returncode, real.stdout, real.stderr)
    assert bad.returncode not in (0, 1)


def test_a_forked_daemon_is_its_own_process_for_signals_and_writes_where_it_was_told(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        f"source:\n  kind: pipe\n  command: sleep 60\nspool:\n  dir: {tmp_path / 'spool'}\n",
        encoding="utf-8")
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = agent_process.popen(["run", "--config", str(tmp_path / "c.yaml")], stdout=subprocess.DEVNULL,
                                   stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.pid != os.getpid()
    try:
        end = time.monotonic() + 30
        while "started version=" not in log.read_text() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        assert "started version=" in log.read_text(), log.read_text()
        assert Path(f"/proc/{proc.pid}/status").read_text().count(f"PPid:\t{os.getpid()}") == 0  # the server's child
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # a requested stop, seen by the process itself
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    killed = agent_process.popen(["run", "--config", str(tmp_path / "c.yaml")], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    killed.kill()
    assert killed.wait(30) == -signal.SIGKILL  # a death by signal reads as Popen's returncode does
