"""Prometheus' own checker, `promtool` (Debian package `prometheus`, installed by ./dev.sh), run on
what the agent exports and on the shipped alert rules. Tests that need it are skipped without it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt install prometheus)")


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)


def check_metrics(text: str) -> None:
    """`promtool check metrics`: the exposition parses and follows the naming and HELP rules."""
    res = run("check", "metrics", stdin=text)
    assert res.returncode == 0, f"promtool check metrics:\n{res.stdout}{res.stderr}"
