"""`replay --report`: the report may go inside the output folder the replay itself makes, as a
technician writes it (`--output-dir out --report out/report.json`), and says what was found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import agent_process
from tests.media_factory import make_video


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
