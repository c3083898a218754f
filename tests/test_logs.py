"""Logs are one line per event; under journald they carry a syslog priority and no timestamp."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import logging, sys
from edge_agent.logs import setup_logging
setup_logging("INFO")
logging.getLogger("edge_agent.pipeline.wiring").warning("payload rejected payload=%s", '"a\\\\nb"')
logging.getLogger("edge_agent.pipeline.wiring").info("clip ready cid=CID-1 clip=abc\\nsecond line")
"""


def run(env: dict[str, str]) -> list[str]:
    code = "import os, sys\n" + SCRIPT
    if env.get("JOURNAL_STREAM") == "auto":
        # JOURNAL_STREAM must name stderr's own device:inode, as systemd sets it
        code = ("import os, sys\nst = os.fstat(2)\nos.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
                + SCRIPT)
        env = {k: v for k, v in env.items() if k != "JOURNAL_STREAM"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return res.stderr.splitlines()


def test_journald_lines_have_priority_and_no_timestamp() -> None:
    lines = run({"JOURNAL_STREAM": "auto"})
    assert lines[0] == '<4>edge_agent.pipeline.wiring: payload rejected payload="a\\nb"'
    assert lines[1] == "<6>edge_agent.pipeline.wiring: clip ready cid=CID-1 clip=abc | second line"


def test_terminal_lines_have_a_timestamp() -> None:
    lines = run({"JOURNAL_STREAM": ""})
    assert len(lines) == 2 and lines[1].split(" ", 2)[1] == "INFO"
    assert lines[0][:4].isdigit()  # 2026-...
