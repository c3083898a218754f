"""Build dist/cid-edge-agent_<version>_<arch>.deb from this repository with dpkg-deb (no debhelper).

    python packaging/build_deb.py amd64|arm64 [--out dist]       (./dev.sh deb ARCH runs this)

The package installs offline: it carries the project's wheel and every dependency's manylinux wheel for
its architecture, for CPython 3.11 (Debian 12 bookworm, Raspberry Pi OS bookworm; glibc 2.36) and
CPython 3.10 (Ubuntu 22.04, the base of Jetson's JetPack 6; glibc 2.35). Its postinst builds a venv in
/usr/lib/edge-agent/<version> from them with `pip --no-index`. The files that make the package are in
packaging/debian/; the units come from systemd/, adjusted to the installed paths.

The version is the project's (setuptools-scm, from git; SETUPTOOLS_SCM_PRETEND_VERSION overrides it),
written the Debian way: PEP 440 pre-releases sort before the release there too (0.3.0rc1 -> 0.3.0~rc1,
0.2.1.dev5+g1a2b3c -> 0.2.1~dev5+g1a2b3c).

Needs the build tools in the running Python (build, setuptools>=68, setuptools-scm>=8: the project's test
extra), dpkg-deb, and the package index for the dependency wheels (pip's cache keeps them).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "packaging" / "debian"
NAME = "cid-edge-agent"
# Debian architecture -> the machine name in manylinux wheel tags
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# (CPython, glibc) of the systems served: Debian 12 / Pi OS bookworm, and Ubuntu 22.04 (Jetson JetPack 6)
TARGETS = (("3.11", "2.36"), ("3.10", "2.35"))
OLDEST_MANYLINUX_MINOR = 17  # manylinux2014
LIB = "usr/lib/edge-agent"


def log(msg: str) -> None:
    print(f"deb: {msg}", file=sys.stderr, flush=True)


def debian_version(pep440: str) -> str:
    """PEP 440 -> Debian, keeping the order: pre- and dev-releases take a '~' (sorts before anything)."""
    v = re.sub(r"\.?(dev|a|b|rc)(\d+)", r"~\1\2", pep440, count=1)
    return re.sub(r"[^A-Za-z0-9.+~-]", ".", v)


def platform_args(pyver: str, glibc: str, machine: str) -> list[str]:
    """pip matches --platform literally: every manylinux tag the target's glibc accepts."""
    minor = int(glibc.split(".")[1])
    tags = [f"manylinux2014_{machine}"] + [f"manylinux_2_{n}_{machine}"
                                           for n in range(OLDEST_MANYLINUX_MINOR, minor + 1)]
    out = ["--only-binary=:all:", "--python-version", pyver, "--implementation", "cp",
           "--abi", "cp" + pyver.replace(".", "")]
    for tag in tags:
        out += ["--platform", tag]
    return out


def run(argv: list[str], **kw) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"deb: failed ({proc.returncode}): {' '.join(argv[:6])} ...")


def build_dists(out: Path) -> tuple[Path, Path]:
    """sdist, then the wheel from that sdist (what a user of the sdist gets), version from git.

    setuptools writes build/, cid_edge_agent.egg-info/ and (setuptools-scm) edge_agent/_version.py into
    the checkout. Run from the checkout, Python finds that egg-info before the installed metadata, and
    the editable install reads that _version.py: a build with SETUPTOOLS_SCM_PRETEND_VERSION would make
    the developer's own agent report the package's version. So the checkout is put back as it was.
    """
    version_file = REPO / "edge_agent" / "_version.py"
    # one build at a time in this checkout (two test workers, or a test beside ./dev.sh deb)
    repo_id = hashlib.sha256(bytes(REPO)).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"cid-edge-agent-build-{repo_id}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = version_file.read_bytes() if version_file.exists() else None
        try:
            run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)])
        finally:
            if before is None:
                version_file.unlink(missing_ok=True)
            else:
                version_file.write_bytes(before)
            shutil.rmtree(REPO / f"{NAME.replace('-', '_')}.egg-info", ignore_errors=True)
            shutil.rmtree(REPO / "build", ignore_errors=True)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def download_wheels(project_wheel: Path, arch: str, wheelhouse: Path) -> None:
    wheelhouse.mkdir(parents=True)
    shutil.copy2(project_wheel, wheelhouse)
    for pyver, glibc in TARGETS:
        t = time.monotonic()
        run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest",
             str(wheelhouse), *platform_args(pyver, glibc, MACHINES[arch]), str(project_wheel)])
        log(f"CPython {pyver} {MACHINES[arch]} wheels resolved in {time.monotonic() - t:.0f} s")


def unit_for_package(text: str) -> str:
    """The repository's unit with the installed paths: the program is /usr/bin/edge-agent."""
    text = text.replace("/opt/edge-agent/venv/bin/edge-agent", "/usr/bin/edge-agent")
    # the install steps in the header are those of a hand install; the package did them
    header, sep, body = text.partition("\n[Unit]")
    keep = [line for line in header.splitlines() if not line.startswith("#   ") and "Install" not in line]
    keep.insert(1, "# Installed by the cid-edge-agent package; local changes go in a drop-in (systemctl edit).")
    return "\n".join(keep) + sep + body


def stage(root: Path, arch: str, version: str, pip_version: str, wheelhouse: Path) -> None:
    def put(rel: str, content: str | bytes, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        p.chmod(mode)

    shutil.copytree(wheelhouse, root / LIB / "wheels")
    for unit in ("edge-agent.service", "edge-agent@.service"):
        put(f"lib/systemd/system/{unit}", unit_for_package((REPO / "systemd" / unit).read_text()))
    put("usr/lib/sysusers.d/edge-agent.conf", (REPO / "systemd" / "edge-agent.sysusers").read_text())
    put("usr/lib/tmpfiles.d/edge-agent.conf", (DEBIAN / "tmpfiles.conf").read_text())
    put("etc/edge-agent/config.yaml", (DEBIAN / "config.yaml").read_text())
    (root / "etc/edge-agent/config.d").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    # dpkg owns the link; postinst points /usr/lib/edge-agent/current at the venv of this version
    os.symlink("../lib/edge-agent/current/bin/edge-agent", root / "usr/bin/edge-agent")
    doc = f"usr/share/doc/{NAME}"
    put(f"{doc}/copyright", copyright_file())
    for name in ("README.md", "CHANGELOG.md"):
        put(f"{doc}/{name}", (REPO / name).read_text())
    put(f"{doc}/config-reference.md", (REPO / "docs" / "config-reference.md").read_text())
    for example in sorted((REPO / "configs").glob("*.yaml")):
        put(f"{doc}/examples/configs/{example.name}", example.read_text())
    put(f"{doc}/examples/systemd/jetson.conf", (REPO / "systemd" / "jetson.conf").read_text())
    for f in sorted((REPO / "monitoring").iterdir()):
        if f.is_file():
            put(f"{doc}/examples/monitoring/{f.name}", f.read_bytes())

    size_kb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) // 1024
    control = (DEBIAN / "control.in").read_text()
    for key, value in (("@VERSION@", version), ("@ARCH@", arch), ("@INSTALLED_SIZE@", str(size_kb))):
        control = control.replace(key, value)
    put("DEBIAN/control", control)
    put("DEBIAN/conffiles", (DEBIAN / "conffiles").read_text())
    for script in ("postinst", "prerm", "postrm"):
        put(f"DEBIAN/{script}", (DEBIAN / script).read_text().replace("@VERSION@", pip_version), 0o755)


def copyright_file() -> str:
    return ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
            "Upstream-Name: edge-agent\n\n"
            "Files: *\nLicense: Apache-2.0\n"
            " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n\n"
            "Files: usr/lib/edge-agent/wheels/av-*.whl\n"
            "License: LGPL-3+ and GPL-2+\n"
            " PyAV's wheels bundle FFmpeg built with libx264 and libx265 (GPL-2+). Distributing\n"
            " this package distributes them: see README.md, section \"Licence note\", for the\n"
            " obligations and for an LGPL-only build.\n\n"
            "Files: usr/lib/edge-agent/wheels/*\n"
            "License: various\n"
            " Each wheel carries its licence in its .dist-info folder.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", choices=sorted(MACHINES))
    p.add_argument("--out", type=Path, default=REPO / "dist")
    args = p.parse_args(argv)
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("deb: dpkg-deb is missing (apt-get install dpkg)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-agent-deb-") as tmp:
        work = Path(tmp)
        _, wheel = build_dists(work / "project")
        pip_version = wheel.name.split("-")[1]
        version = debian_version(pip_version)
        log(f"built {wheel.name} (Debian version {version})")
        download_wheels(wheel, args.arch, work / "wheelhouse")
        root = work / "root"
        stage(root, args.arch, version, pip_version, work / "wheelhouse")
        args.out.mkdir(parents=True, exist_ok=True)
        deb = args.out / f"{NAME}_{version}_{args.arch}.deb"
        # gzip: the payload is mostly wheels (zip files, already compressed); xz would take minutes
        # for a few per cent
        run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)])
    log(f"wrote {deb.relative_to(REPO) if deb.is_relative_to(REPO) else deb} "
        f"({deb.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t0:.0f} s")
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
