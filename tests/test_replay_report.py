"""`replay --report`: the report may go inside the output folder the replay itself makes, as a
technician writes it (`--output-dir out --report out/report.json`), and says what was found."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests import agent_process
from tests.media_factory import make_video
from tests.receiver_fixture import free_port


@pytest.mark.slow
def test_the_report_may_go_in_the_output_folder_the_replay_makes(tmp_path: Path) -> None:
    video = make_video(tmp_path / "line.mp4", seconds=5.0, size=(480, 270), codes=[("CID-REPORT-1", 1.0, 3.0)])
    out = tmp_path / "out" / "run1"
    res = agent_process.run(["replay", str(video), "--no-upload", "-q",
                             "--output-dir", str(out), "--report", str(out / "report.json")],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={"EDGE_AGENT__SPOOL__DIR": str(tmp_path / "spool"), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert [e["cid"] for e in report["events"]] == ["CID-REPORT-1"]


@pytest.mark.slow
def test_the_reports_drops_are_this_runs_while_the_spool_counts_every_run(tmp_path: Path) -> None:
    """A replay into a spool that gives its reads up (spool.max_age_s far too short, no server to take
    them): the report counts the reads this run's spool dropped, each one logged, not the spool's
    count across runs (`spool status`, which the second run adds to)."""
    video = make_video(tmp_path / "line.mp4", seconds=5.0, size=(480, 270),
                       codes=[("CID-DROP-1", 0.5, 1.5), ("CID-DROP-2", 3.0, 4.0)])
    env = {"EDGE_AGENT__SPOOL__DIR": str(tmp_path / "spool"), "EDGE_AGENT__SPOOL__MAX_AGE_S": "0.001",
           "EDGE_AGENT__SPOOL__MIN_FREE_BYTES": "0", "EDGE_AGENT__UPLOAD__URL": f"http://127.0.0.1:{free_port()}/cid",
           "PATH": "/usr/bin:/bin"}
    reported = []
    for run in (1, 2):
        report_file = tmp_path / f"report{run}.json"
        res = agent_process.run(["replay", str(video), "-q", "--drain-timeout", "0", "--report", str(report_file)],
                                capture_output=True, text=True, timeout=120, check=False, env=env)
        logged = len(re.findall(r"spool: dropped cid=\S+ clip=\S+ reason=max_age", res.stderr))
        report = json.loads(report_file.read_text())
        assert logged >= 1 and report["dropped"] == {"max_age": logged}, (run, report["dropped"], res.stderr)
        assert f"clips dropped by the spool: max_age {logged}" in res.stderr
        reported.append(logged)
    status = agent_process.run(["spool", "status", "--json"], capture_output=True, text=True, timeout=60,
                               check=True, env=env)
    assert json.loads(status.stdout)["dropped"] == {"max_age": sum(reported)}
