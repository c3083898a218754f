"""The distribution as users get it: the sdist, the wheel built from it, and the Debian package's files.

The sdist and wheel are built for real (python -m build, without fetching build tools), the sdist is
unpacked and a few of its own tests run from it. The full .deb (with ~170 MB of dependency wheels
downloaded per architecture) takes minutes, so CI builds a package from the same staging code with only
the project's wheel inside and inspects it with dpkg-deb; packaging/test-in-root.sh installs the real one
in a Debian root.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "packaging" / "debian"

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                                reason="builds from the git checkout (setuptools-scm)")


def _build_deb_module():
    spec = importlib.util.spec_from_file_location("build_deb", REPO / "packaging" / "build_deb.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist, then the wheel built from that sdist: what `python -m build` gives a user."""
    sdist, wheel = _build_deb_module().build_dists(tmp_path_factory.mktemp("dist"))
    return {"sdist": sdist, "wheel": wheel}


@pytest.mark.slow
def test_the_distribution_is_cid_edge_agent_with_a_version_from_git(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
        entry_points = zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
        version_py = zf.read("edge_agent/_version.py").decode()
    assert meta["Name"] == "cid-edge-agent"
    assert meta["License-Expression"] == "Apache-2.0"
    assert "edge-agent = edge_agent.cli:main" in entry_points
    # not the fallback: the version and the commit came from this checkout
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert meta["Version"] != "0.0.0"
    assert f"commit_id = 'g{head[:7]}" in version_py or f'commit_id = "g{head[:7]}' in version_py


@pytest.mark.slow
def test_the_wheel_installs_units_example_configs_and_monitoring_under_share(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as zf:
        names = set(zf.namelist())
    data = next(n.split("/")[0] for n in names if ".data/" in n)
    for rel in ("systemd/edge-agent.service", "systemd/edge-agent@.service", "systemd/edge-agent.sysusers",
                "configs/usb-webcam.yaml", "monitoring/alerts.yml", "monitoring/grafana-dashboard.json"):
        assert f"{data}/data/share/edge-agent/{rel}" in names, rel
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


@pytest.mark.slow
def test_the_sdist_carries_tests_samples_and_packaging_and_its_own_tests_pass(
        dists: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(dists["sdist"]) as tf:
        tf.extractall(tmp_path, filter="data")
    (src,) = tmp_path.iterdir()
    for rel in ("LICENSE", "CHANGELOG.md", "MANIFEST.in", "tests/media_factory.py", "sample_media/manifest.json",
                "sample_media/conveyor_720p30.mp4", "systemd/edge-agent.service", "configs/pi-csi.yaml",
                "monitoring/alerts.yml", "packaging/debian/postinst", "packaging/build_deb.py"):
        assert (src / rel).is_file(), rel
    # the sdist's own tests, run from the unpacked tree (its edge_agent, its tests package)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_cid_validation.py", "tests/test_ring_buffer.py"],
                          cwd=src, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
    probe = subprocess.run([sys.executable, "-c", "import edge_agent, tests.media_factory; print(edge_agent.__file__)"],
                           cwd=src, capture_output=True, text=True, env=env)
    assert probe.returncode == 0 and probe.stdout.startswith(str(src)), probe.stdout + probe.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_the_deb_has_units_on_the_installed_paths_the_conffile_and_the_command(
        dists: dict[str, Path], tmp_path: Path) -> None:
    bd = _build_deb_module()
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    shutil.copy2(dists["wheel"], wheelhouse)
    pip_version = dists["wheel"].name.split("-")[1]
    root = tmp_path / "root"
    bd.stage(root, "arm64", bd.debian_version(pip_version), pip_version, wheelhouse)
    deb = tmp_path / "test.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    field = lambda name: subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True,  # noqa: E731
                                        text=True, check=True).stdout.strip()
    assert field("Package") == "cid-edge-agent" and field("Architecture") == "arm64"
    assert field("Version") == bd.debian_version(pip_version)
    # procps: /bin/kill of ExecReload (a minimal Debian has none)
    assert field("Depends") == "python3 (>= 3.10), python3 (<< 3.12), python3-venv, libzbar0, procps"
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./lib/systemd/system/edge-agent.service", "./lib/systemd/system/edge-agent@.service",
                 "./usr/lib/sysusers.d/edge-agent.conf", "./usr/lib/tmpfiles.d/edge-agent.conf",
                 "./etc/edge-agent/config.yaml", "./etc/edge-agent/config.d/",
                 f"./usr/lib/edge-agent/wheels/{dists['wheel'].name}",
                 "./usr/bin/edge-agent -> ../lib/edge-agent/current/bin/edge-agent"):
        assert path in listing, path
    unit = (root / "lib/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/usr/bin/edge-agent run --config /etc/edge-agent/config.yaml" in unit
    assert "/opt/edge-agent" not in unit
    assert "ExecStart=/usr/bin/edge-agent run --config /etc/edge-agent/%i.yaml" in \
        (root / "lib/systemd/system/edge-agent@.service").read_text()
    assert (root / "DEBIAN/conffiles").read_text().split() == ["/etc/edge-agent/config.yaml"]
    postinst = (root / "DEBIAN/postinst").read_text()
    assert f"VERSION={pip_version}\n" in postinst and "@VERSION@" not in postinst


def test_the_maintainer_scripts_are_valid_posix_sh_and_stop_on_errors() -> None:
    for name in ("postinst", "prerm", "postrm"):
        script = DEBIAN / name
        assert os.access(script, os.X_OK), f"{name} must be executable"
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text, name
        for shell in ("sh", "bash"):
            proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{shell} -n {name}: {proc.stderr}"


def test_the_shipped_config_sets_the_spool_to_the_state_directory_and_validates() -> None:
    from edge_agent.config.loader import parse_config

    # strict_source=False: the example names /dev/video0, which a CI machine has not
    cfg = parse_config((DEBIAN / "config.yaml").read_text(), "config.yaml", strict_source=False, env={})
    assert str(cfg.spool.dir) == "/var/lib/edge-agent/spool"
    tmpfiles = (DEBIAN / "tmpfiles.conf").read_text()
    assert "d /var/lib/edge-agent/spool 0750 edge-agent edge-agent -" in tmpfiles


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg --compare-versions")
def test_debian_versions_sort_as_the_python_versions_do() -> None:
    bd = _build_deb_module()
    ordered = ["0.0.1.dev127+g4559121", "0.0.1.dev128+g7904afd", "0.1.0rc1", "0.1.0", "0.1.1.dev3+gabc1234",
               "0.2.0a1", "0.2.0b2", "0.2.0"]
    debs = [bd.debian_version(v) for v in ordered]
    for older, newer in zip(debs, debs[1:], strict=False):
        assert subprocess.run(["dpkg", "--compare-versions", older, "lt", newer]).returncode == 0, (older, newer)
