"""Running the agent as a device without a real-time clock lives it: a shifted wall clock that a test steps
while the agent runs (tests/clock_shift/sitecustomize.py), the kernel's NTP state as the agent will read it
(EDGE_AGENT_CLOCK_SYNCED), and a reboot as a new boot id, bind-mounted over
/proc/sys/kernel/random/boot_id in a private mount namespace (`unshare -m`; root, as CI is)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIFT_DIR = Path(__file__).resolve().parent / "clock_shift"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
DAY = 86_400.0


def set_shift(path: Path, seconds: float) -> None:
    """Step the shifted clock: the agent reads the new value within 50 ms (written atomically)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{seconds!r}\n", encoding="ascii")
    os.replace(tmp, path)


def agent_env(shift_file: Path, synced: bool | None, **extra: str) -> dict[str, str]:
    """The environment of an agent process whose wall clock is shifted by the seconds in `shift_file`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGE_AGENT_TEST_CLOCK_SHIFT_FILE": str(shift_file),
           "PYTHONPATH": os.pathsep.join([str(SHIFT_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra}
    env.pop("EDGE_AGENT_CLOCK_SYNCED", None)
    if synced is not None:
        env["EDGE_AGENT_CLOCK_SYNCED"] = "1" if synced else "0"
    return env


def agent_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent.cli", *args]


class Boot:
    """One boot of the device: commands run through `argv()` see its boot id."""

    def __init__(self, where: Path):
        self.id = str(uuid.uuid4())
        self.file = where / f"boot_id-{self.id[:8]}"
        self.file.write_text(self.id + "\n", encoding="ascii")

    def argv(self, argv: list[str]) -> list[str]:
        return ["unshare", "-m", "sh", "-c", f'mount --bind "$0" {BOOT_ID} && exec "$@"', str(self.file), *argv]


def require_boots(tmp_path: Path) -> None:
    """Skip, with the reason, where a private mount namespace cannot be made."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    boot = Boot(tmp_path)
    res = subprocess.run(boot.argv(["cat", BOOT_ID]), capture_output=True, text=True, check=False)
    if res.returncode != 0 or res.stdout.strip() != boot.id:
        pytest.skip(f"cannot bind-mount a boot id here (unshare -m needs root): {res.stderr.strip()}")
