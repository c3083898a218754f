"""A camera command's stderr reaches the log line by line, masked, and bounded: a progress meter
rewritten with carriage returns or a chatty command cannot flood the journal, and its last words are
kept to say why it stopped."""

from __future__ import annotations

import logging
import subprocess

import pytest

from edge_agent.capture.command_output import BURST, CommandOutput
from edge_agent.logs import OneLineFormatter


def _said(script: str, caplog: pytest.LogCaptureFixture) -> tuple[list[str], str | None]:
    with caplog.at_level(logging.INFO, logger="edge_agent.capture.command"):
        proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0)
        assert proc.stderr is not None
        output = CommandOutput(proc.stderr, "cam")
        proc.wait(10)
        last = output.last_words(wait_s=10)
    return [OneLineFormatter("%(message)s").format(r) for r in caplog.records], last


def test_a_chatty_command_shows_a_burst_of_lines_then_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    lines, last = _said("i=0; while [ $i -lt 500 ]; do echo frame $i >&2; i=$((i+1)); done", caplog)
    assert lines[:BURST] == [f"cam: frame {i}" for i in range(BURST)]
    assert lines[BURST:] == [f"cam: {500 - BURST} more line(s) of its output not shown"]
    assert last == "frame 499"


def test_carriage_returns_split_a_progress_meter_and_a_login_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    lines, last = _said(r"printf 'frame=1\rframe=2\rcannot open rtsp://admin:S3cret@cam/s\n' >&2", caplog)
    assert lines == ["cam: frame=1", "cam: frame=2", "cam: cannot open rtsp://admin:***@cam/s"]
    assert last == "cannot open rtsp://admin:S3cret@cam/s"  # the raw words stay in memory; every output masks
