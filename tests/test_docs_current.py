"""The generated key reference and schema match the code (example configs and the systemd unit
have their own tests: test_example_configs.py, test_systemd_unit.py)."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.commands.config import reference_markdown, schema

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "run `edge-agent config reference` and commit docs/"


def test_config_reference_is_current() -> None:
    assert (ROOT / "docs" / "config-reference.md").read_text() == reference_markdown(), REGENERATE


def test_config_schema_is_current() -> None:
    assert json.loads((ROOT / "docs" / "config.schema.json").read_text()) == schema(), REGENERATE
