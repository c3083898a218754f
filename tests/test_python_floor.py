"""The package runs on every Python its requires-python admits (3.10: Ubuntu 22.04 and JetPack 6's
base), while CI runs a newer one: vermin reads which Python each standard-library use needs, so a
3.11-only name (enum.StrEnum, tomllib, contextlib.chdir) fails here, not on a Jetson."""

from __future__ import annotations

import enum
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from edge_agent.str_enum import StrEnum310

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_needs_no_python_newer_than_requires_python() -> None:
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    version = re.fullmatch(r">=\s*(3\.\d+)", floor)
    assert version, f"requires-python {floor!r}: the check reads a plain >=3.N"
    vermin = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())"]
    run = subprocess.run([*vermin, f"-t={version[1]}-", "--no-tips", "--violations",
                          "--eval-annotations", str(ROOT / "edge_agent")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


class Ours(StrEnum310):
    SENT = "sent"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="compares with the standard library's StrEnum")
def test_the_3_10_str_enum_behaves_as_the_standard_librarys() -> None:
    theirs = enum.StrEnum("Theirs", {"SENT": "sent"})  # novermin: skipped before 3.11
    for member in (Ours.SENT, theirs.SENT):
        assert str(member) == f"{member}" == format(member, "") == "sent"
        assert member == "sent" and json.dumps({"r": member}) == '{"r": "sent"}' and isinstance(member, str)
    assert Ours("sent") is Ours.SENT
