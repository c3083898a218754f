"""The package installed in clean Debian and Ubuntu roots and run under a real systemd: the scripts in
packaging/ (test-in-root.sh: install, no-terminal upgrade and rollback with an edited config, purge, on
bookworm and trixie, amd64 and arm64 under qemu, and Ubuntu jammy and noble; test-systemd.sh: the same
package booted with systemd-nspawn -b).

Minutes each (debootstrap on the first run, two package builds, qemu), root only, and the package
registries: a tier of its own, skipped unless asked for with
    EDGE_AGENT_ROOT_TESTS=1 ./dev.sh test -m root tests/test_systemd_boot.py
Roots and packages are cached under /var/tmp/edge-agent-roots (EDGE_AGENT_ROOT_CACHE) between runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.environ.get("EDGE_AGENT_ROOT_TESTS") != "1",
                       reason="the root tier: EDGE_AGENT_ROOT_TESTS=1 ./dev.sh test -m root (root, minutes)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap, chroot and systemd-nspawn need root"),
]


def run(*argv: str, timeout: float) -> None:
    proc = subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    print(proc.stderr[-20000:])
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "FAIL" not in proc.stderr


# Ubuntu 22.04 (Python 3.10, JetPack 6's base) and 24.04 (3.12) on amd64: their arm64 archive
# (ports.ubuntu.com) is another host than the amd64 one
ROOTS = [("amd64", "bookworm"), ("amd64", "trixie"), ("arm64", "bookworm"), ("arm64", "trixie"),
         ("amd64", "jammy"), ("amd64", "noble")]


@pytest.mark.parametrize(("arch", "suite"), ROOTS, ids=[f"{a}-{s}" for a, s in ROOTS])
def test_install_upgrade_rollback_and_purge_keep_every_edit_without_a_prompt(arch: str, suite: str) -> None:
    run("packaging/test-in-root.sh", arch, suite, timeout=3600)


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "jammy", "noble"])
def test_under_systemd_ready_reload_credential_watchdog_upgrade_and_a_clean_stop(suite: str) -> None:
    run("packaging/test-systemd.sh", suite, timeout=1800)
