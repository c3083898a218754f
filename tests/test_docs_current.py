"""The generated key reference and schema match the code (example configs and the systemd unit
have their own tests: test_example_configs.py, test_systemd_unit.py)."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.commands.config import reference_markdown, schema
from tests import agent_process

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "run `edge-agent config reference --out docs` and commit docs/"


def test_config_reference_is_current() -> None:
    assert (ROOT / "docs" / "config-reference.md").read_text() == reference_markdown(), REGENERATE


def test_config_schema_is_current() -> None:
    assert json.loads((ROOT / "docs" / "config.schema.json").read_text()) == schema(), REGENERATE


def test_config_reference_without_out_prints_it_and_writes_nothing(tmp_path: Path) -> None:
    """Installed, the package has no docs/ of its own: writing beside the code would write into site-packages."""
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "docs").iterdir()}
    res = agent_process.run(["config", "reference"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == reference_markdown()
    assert list(tmp_path.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "docs").iterdir()} == before


def test_config_reference_out_writes_both_files(tmp_path: Path) -> None:
    res = agent_process.run(["config", "reference", "--out", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "d" / "config-reference.md").read_text() == reference_markdown()
    assert json.loads((tmp_path / "d" / "config.schema.json").read_text()) == schema()
