"""The distribution as users get it: the sdist, the wheel built from it, the version every build carries,
the wheel lock, and the Debian package's files.

The sdist and wheel are built for real (python -m build through the project's own backend, without
fetching build tools), the sdist is unpacked and a few of its own tests run from it. The full .deb (the
locked wheels of four Pythons) takes minutes and the wheelhouse, so here a package is built by the same
staging code with only the project's wheel inside and inspected with dpkg-deb; packaging/test-in-root.sh
installs, upgrades, rolls back and purges the real one in clean Debian roots, packaging/test-systemd.sh
runs it under systemd.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import tomllib
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
DEBIAN = PACKAGING / "debian"

needs_git = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                               reason="builds from the git checkout (the version comes from its history)")
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # as the import system does: dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _build_deb_module():
    return _load(PACKAGING / "build_deb.py", "build_deb")


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=env).stdout.strip()


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist, then the wheel built from that sdist: what `python -m build` gives a user."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("builds from the git checkout")
    bd = _build_deb_module()
    sdist, wheel = bd.build_dists(tmp_path_factory.mktemp("dist"), bd.source_date_epoch())
    return {"sdist": sdist, "wheel": wheel}


# --- the version ----------------------------------------------------------------------------------


@pytest.fixture()
def fake_checkout(tmp_path: Path):
    """A git repository with the backend and a CHANGELOG: version_backend computes its version from it."""
    (tmp_path / "packaging").mkdir()
    shutil.copy(PACKAGING / "version_backend.py", tmp_path / "packaging")
    (tmp_path / "edge_agent").mkdir()
    git(tmp_path, "init", "-q")
    (tmp_path / "CHANGELOG.md").write_text("# Changelog\n\n## [Unreleased]\n\n## [0.1.0]\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "0.1.0")
    return tmp_path


def backend_version(root: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_VERSION"}
    return subprocess.run([sys.executable, str(root / "packaging" / "version_backend.py")], capture_output=True,
                          text=True, check=True, env=env).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_version_follows_the_changelog_and_counts_commits_without_tags(fake_checkout: Path) -> None:
    root = fake_checkout
    assert backend_version(root) == "0.1.0"
    for n in (1, 2):
        (root / "x.txt").write_text(str(n))
        git(root, "add", "x.txt")
        git(root, "commit", "-qm", f"change {n}")
    head = git(root, "rev-parse", "--short=7", "HEAD")
    assert backend_version(root) == f"0.1.0.post2+g{head}"
    (root / "x.txt").write_text("edited")
    assert backend_version(root) == f"0.1.0.post2+g{head}.dirty"
    git(root, "checkout", "-q", "x.txt")
    # the release: its heading added; that commit is the release, whatever tags exist or not
    text = (root / "CHANGELOG.md").read_text().replace("## [Unreleased]\n", "## [Unreleased]\n\n## [0.2.0]\n")
    (root / "CHANGELOG.md").write_text(text)
    git(root, "commit", "-qam", "release 0.2.0")
    assert backend_version(root) == "0.2.0"


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg --compare-versions")
def test_one_version_string_for_pip_dpkg_and_the_agent_sorting_the_same_way() -> None:
    """No translation between PEP 440 and Debian: each string is PEP 440's normal form and dpkg orders
    the strings as pip does."""
    ordered = ["0.1.0", "0.1.0.post1+g1a2b3c4", "0.1.0.post2+g0f0f0f0", "0.1.0.post10+gabc1234",
               "0.1.0.post10+gabc1234.dirty", "0.2.0", "0.2.0.post3+g7904afd", "1.0.0"]
    for v in ordered:
        assert str(Version(v)) == v
    assert sorted(ordered, key=Version) == ordered
    for older, newer in zip(ordered, ordered[1:], strict=False):
        assert subprocess.run(["dpkg", "--compare-versions", older, "lt", newer]).returncode == 0, (older, newer)


@needs_git
@pytest.mark.slow
def test_the_distribution_is_cid_edge_agent_with_the_checkouts_version(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
        entry_points = zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
        version_py = zf.read("edge_agent/_version.py").decode()
    assert meta["Name"] == "cid-edge-agent"
    assert meta["License-Expression"] == "Apache-2.0"
    assert "edge-agent = edge_agent.cli:main" in entry_points
    head = git(REPO, "rev-parse", "--short=7", "HEAD")
    assert meta["Version"] == backend_version(REPO)
    assert meta["Version"].split("+")[0].split(".post")[0] == re.search(
        r"^## \[(\d+\.\d+\.\d+)\]", (REPO / "CHANGELOG.md").read_text(), re.M)[1]
    assert f"commit_id = 'g{head}'" in version_py


@needs_git
@pytest.mark.slow
def test_the_wheel_installs_units_example_configs_and_monitoring_under_share(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as zf:
        names = set(zf.namelist())
    data = next(n.split("/")[0] for n in names if ".data/" in n)
    for rel in ("systemd/edge-agent.service", "systemd/edge-agent@.service", "systemd/edge-agent.sysusers",
                "configs/usb-webcam.yaml", "monitoring/alerts.yml", "monitoring/grafana-dashboard.json"):
        assert f"{data}/data/share/edge-agent/{rel}" in names, rel
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "packaging/")) for n in names)


@needs_git
@pytest.mark.slow
def test_the_sdist_carries_tests_samples_and_packaging_and_its_own_tests_pass(
        dists: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(dists["sdist"]) as tf:
        tf.extractall(tmp_path, filter="data")
    (src,) = tmp_path.iterdir()
    for rel in ("LICENSE", "CHANGELOG.md", "MANIFEST.in", "tests/media_factory.py", "sample_media/manifest.json",
                "sample_media/conveyor_720p30.mp4", "systemd/edge-agent.service", "configs/pi-csi.yaml",
                "monitoring/alerts.yml", "packaging/debian/postinst", "packaging/build_deb.py",
                "packaging/version_backend.py", "packaging/requirements.lock", "edge_agent/_version.py"):
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
    # the sdist keeps the version it was made with (no git there)
    assert _load(src / "packaging" / "version_backend.py", "sdist_backend").version()[0] == \
        dists["wheel"].name.split("-")[1]


# --- the lock ---------------------------------------------------------------------------------------


def test_every_locked_wheel_is_pinned_with_hashes_and_numpy_is_the_oss() -> None:
    bd = _build_deb_module()
    pins = bd.read_lock()
    names = {p.name for p in pins}
    for p in pins:
        assert re.match(r"^[A-Za-z0-9_.-]+==[^ ;]+ --hash=sha256:[0-9a-f]{64}", p.line), p.line
    # every runtime requirement of pyproject.toml is locked, except numpy: python3-numpy of each OS
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=!~;\[ ]", d)[0].lower().replace("_", "-") for d in project["dependencies"]}
    assert wanted - {n.replace("_", "-") for n in names} == {"numpy"}
    assert "numpy" not in names


def test_every_target_python_and_architecture_gets_one_version_of_each_package() -> None:
    bd = _build_deb_module()
    pins = bd.read_lock()
    sets = {}
    for machine in bd.MACHINES.values():
        for target in bd.TARGETS:
            lines = bd.pins_for(pins, target, machine)
            sets[(machine, target.python)] = {line.split(" ")[0] for line in lines}
    assert len(set(map(frozenset, sets.values()))) == 1, sets  # the same pins everywhere (hard links)
    assert [t.python for t in bd.TARGETS] == ["3.10", "3.11", "3.12", "3.13"]


def test_the_locks_are_refreshed_by_the_documented_command() -> None:
    for lock in ("requirements.lock", "build-tools.lock"):
        assert "./dev.sh lock" in (PACKAGING / lock).read_text().split("\n", 3)[1], lock
    dev = (REPO / "dev.sh").read_text()
    assert "lock) lock ;;" in dev and "--generate-hashes" in dev and "--require-hashes" in dev


# --- the Debian package -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A package staged by build_deb.py as the real one, with only the project's wheel in its venv."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    bd = _build_deb_module()
    version = dists["wheel"].name.split("-")[1]
    tmp = tmp_path_factory.mktemp("deb")
    epoch = bd.source_date_epoch()
    debs = []
    for n in (1, 2):  # twice, to compare
        root = tmp / f"root{n}"
        saved = bd.stage_venv(root, version, "arm64", tmp, dists["wheel"], pins=[])
        bd.stage(root, version)
        bd.finish(root, "arm64", version, epoch)
        deb = tmp / f"{n}" / "test.deb"
        deb.parent.mkdir()
        bd.build_package(root, deb, "zstd", epoch)
        debs.append(deb)
    return {"deb": debs[0], "again": debs[1], "root": tmp / "root1", "version": version, "saved": saved, "bd": bd}


def dpkg_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


@needs_git
@needs_dpkg
@pytest.mark.slow
def test_the_deb_says_the_wheels_version_depends_on_any_python_3_10_to_3_13_and_the_oss_numpy(package: dict) -> None:
    deb = package["deb"]
    assert dpkg_field(deb, "Package") == "cid-edge-agent" and dpkg_field(deb, "Architecture") == "arm64"
    assert dpkg_field(deb, "Version") == package["version"]  # the same string as the wheel's and the agent's
    # procps: /bin/kill of ExecReload (a minimal Debian has none); libzbar0t64: its name from Debian 13 on
    assert dpkg_field(deb, "Depends") == ("python3 (>= 3.10), python3 (<< 3.14), python3-numpy, "
                                          "libzbar0 | libzbar0t64, procps")
    assert "Homepage" not in subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True).stdout


@needs_git
@needs_dpkg
@pytest.mark.slow
def test_the_deb_has_no_conffile_and_md5sums_and_installed_size_of_every_file(package: dict) -> None:
    root = package["root"]
    assert not (root / "DEBIAN" / "conffiles").exists()
    listing = subprocess.run(["dpkg-deb", "-c", str(package["deb"])], capture_output=True, text=True,
                             check=True).stdout
    assert "./etc/edge-agent/config.d/" in listing and "./etc/edge-agent/config.yaml" not in listing
    sums = dict(reversed(line.split("  ", 1)) for line in (root / "DEBIAN" / "md5sums").read_text().splitlines())
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and "DEBIAN" not in p.parts]
    assert sorted(sums) == sorted(p.relative_to(root).as_posix() for p in files)
    for p in files:
        assert sums[p.relative_to(root).as_posix()] == hashlib.md5(p.read_bytes()).hexdigest()
    used = sum(-(-st.st_size // 1024) for st in {p.stat().st_ino: p.stat() for p in files}.values())
    declared = int(dpkg_field(package["deb"], "Installed-Size"))
    assert used <= declared <= used + 1 + sum(1 for p in root.rglob("*") if not p.is_file() or p.is_symlink())


@needs_git
@needs_dpkg
@pytest.mark.slow
def test_the_deb_has_the_units_the_command_and_the_owners_first_config(package: dict) -> None:
    root, version = package["root"], package["version"]
    listing = subprocess.run(["dpkg-deb", "-c", str(package["deb"])], capture_output=True, text=True,
                             check=True).stdout
    for path in ("./usr/lib/systemd/system/edge-agent.service", "./usr/lib/systemd/system/edge-agent@.service",
                 "./usr/lib/sysusers.d/edge-agent.conf", "./usr/lib/tmpfiles.d/edge-agent.conf",
                 "./usr/share/cid-edge-agent/config.yaml", "./usr/bin/edge-agent",
                 "./usr/share/doc/cid-edge-agent/README.md",
                 f"./usr/lib/edge-agent/{version}/pyvenv.cfg", f"./usr/lib/edge-agent/{version}/bin/edge-agent",
                 f"./usr/lib/edge-agent/{version}/bin/python3 -> /usr/bin/python3"):
        assert path in listing, path
    for py in ("3.10", "3.11", "3.12", "3.13"):
        assert f"./usr/lib/edge-agent/{version}/lib/python{py}/site-packages/edge_agent/cli.py" in listing
    unit = (root / "usr/lib/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/usr/bin/edge-agent run --config /etc/edge-agent/config.yaml" in unit
    assert "/opt/edge-agent" not in unit
    assert "Documentation=file:/usr/share/doc/cid-edge-agent/README.md" in unit
    assert "include-system-site-packages = true" in (root / f"usr/lib/edge-agent/{version}/pyvenv.cfg").read_text()
    assert f"written once, by the first install of cid-edge-agent ({version})" in \
        (root / "usr/share/cid-edge-agent/config.yaml").read_text().lower()
    postinst = (root / "DEBIAN/postinst").read_text()
    assert f"VERSION={version}\n" in postinst and "@VERSION@" not in postinst


@needs_git
@needs_dpkg
@pytest.mark.slow
def test_files_the_same_for_every_python_are_stored_once_and_two_builds_are_identical(package: dict) -> None:
    assert package["saved"] > 0
    tar = subprocess.run(f"dpkg-deb --fsys-tarfile '{package['deb']}' | tar -tvf -", shell=True,
                         capture_output=True, text=True, check=True).stdout
    cli = [line for line in tar.splitlines() if line.endswith("site-packages/edge_agent/cli.py")
           or "site-packages/edge_agent/cli.py link to" in line]
    assert len(cli) == 4 and sum(line.startswith("h") for line in cli) == 3, cli
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (package["deb"], package["again"])]
    assert digest[0] == digest[1]


def test_the_maintainer_scripts_are_valid_posix_sh_and_stop_on_errors() -> None:
    for name in ("postinst", "prerm", "postrm"):
        script = DEBIAN / name
        assert os.access(script, os.X_OK), f"{name} must be executable"
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text, name
        for shell in ("sh", "bash"):
            proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{shell} -n {name}: {proc.stderr}"


def test_purge_keeps_the_system_user_as_debian_does() -> None:
    postrm = (DEBIAN / "postrm").read_text()
    assert "userdel" not in postrm and "groupdel" not in postrm and "deluser" not in postrm


def test_the_owners_first_config_sets_the_spool_to_the_state_directory_and_validates() -> None:
    from edge_agent.config.loader import parse_config

    # strict_source=False: the template names /dev/video0, which a CI machine has not
    cfg = parse_config((DEBIAN / "config.yaml").read_text(), "config.yaml", strict_source=False, env={})
    assert str(cfg.spool.dir) == "/var/lib/edge-agent/spool"
    tmpfiles = (DEBIAN / "tmpfiles.conf").read_text()
    assert "d /var/lib/edge-agent/spool 0750 edge-agent edge-agent -" in tmpfiles


def test_install_hints_name_the_distribution_and_its_extras() -> None:
    """`pip install 'edge-agent[...]'` installs an unrelated project: every hint names cid-edge-agent."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    hints = []
    for path in (REPO / "edge_agent").rglob("*.py"):
        hints += [(path.name, *m) for m in re.findall(r"pip install '([\w-]+)\[(\w+)\]'", path.read_text())]
    assert hints
    for file, dist, extra in hints:
        assert dist == project["name"] and extra in project["optional-dependencies"], (file, dist, extra)


def test_nothing_the_package_or_units_ship_links_outside_the_repository() -> None:
    """Addresses in the packaging, units and fleet files: loopback and example hosts, the archives the root
    tests bootstrap Debian and Ubuntu from, and the one URI the Debian copyright format requires as its name;
    no project page that does not exist."""
    allowed = re.compile(r"https?://(127\.0\.0\.1|localhost|edge-server|edge:|device:|deb\.debian\.org/debian"
                         r"|archive\.ubuntu\.com/ubuntu|ports\.ubuntu\.com/ubuntu-ports"
                         r"|www\.debian\.org/doc/packaging-manuals/copyright-format/1\.0/)")
    files = [REPO / "pyproject.toml", *(p for d in ("systemd", "packaging", "fleet") for p in (REPO / d).rglob("*")
                                        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".lock")]
    for path in files:
        for url in re.findall(r"https?://[^\s\"'`)>]+", path.read_text(errors="replace")):
            assert allowed.match(url), f"{path.relative_to(REPO)}: {url}"
