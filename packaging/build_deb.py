"""Build dist/cid-edge-agent_<version>_<arch>.deb from this repository with dpkg-deb (no debhelper).

    python packaging/build_deb.py fetch [--arch amd64|arm64]     every locked wheel into the wheelhouse
    python packaging/build_deb.py build amd64|arm64 [--out dist]  the package, from the wheelhouse only
    (./dev.sh deb ARCH runs both in a build venv of packaging/build-tools.lock; ./dev.sh lock refreshes the locks)

One package per architecture serves CPython 3.10 to 3.13 (Ubuntu 22.04 / JetPack 6, Debian 12 / Raspberry Pi
OS bookworm, Ubuntu 24.04 / JetPack 7, Debian 13 / Raspberry Pi OS trixie): the venv is built here, shipped
inside the package in /usr/lib/edge-agent/<version>/, with one site-packages per Python
(lib/python3.X/site-packages); the device's /usr/bin/python3 picks its own. Processes run postinst's
hard-link copy of it (/usr/lib/edge-agent/run/<version>, see packaging/debian/postinst), so an upgrade
never removes code from under a running agent. Files that are the same for
every Python (pure Python, abi3 OpenCV and PyAV) are hard links, stored once in the .deb and on disk. dpkg
owns every file (md5sums, a measured Installed-Size); postinst compiles the .pyc files of the device's
Python only, as Debian's own Python packages do.

Every dependency wheel comes from packaging/requirements.lock (hashes checked by pip --require-hashes),
resolved once for all targets against the numpy each OS ships (packaging/os-numpy.txt): the venv has no
numpy of its own and uses python3-numpy through its system site-packages, so Debian's and Raspberry Pi
OS's extensions built on it (python3-picamera2's simplejpeg, python3-scipy) import in the agent's venv.

Reproducible: the same commit gives the same wheel set and the same .deb, byte for byte (file times are
the commit's, SOURCE_DATE_EPOCH; entries sorted; no build paths inside). `build` never touches the
network: with a wheelhouse filled once by `fetch`, `unshare -n ./dev.sh deb amd64` works.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
DEBIAN = PACKAGING / "debian"
LOCK = PACKAGING / "requirements.lock"
NAME = "cid-edge-agent"
LIB = "usr/lib/edge-agent"
# Debian architecture -> the machine name in manylinux wheel tags
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
OLDEST_MANYLINUX_MINOR = 17  # manylinux2014


@dataclass(frozen=True)
class Target:
    python: str  # X.Y
    full: str  # the patch release the OS ships (for markers that name one)
    glibc: str
    systems: str


TARGETS = (Target("3.10", "3.10.12", "2.35", "Ubuntu 22.04, JetPack 6"),
           Target("3.11", "3.11.2", "2.36", "Debian 12, Raspberry Pi OS bookworm"),
           Target("3.12", "3.12.3", "2.39", "Ubuntu 24.04, JetPack 7"),
           Target("3.13", "3.13.5", "2.41", "Debian 13, Raspberry Pi OS trixie"))


def log(msg: str) -> None:
    print(f"deb: {msg}", file=sys.stderr, flush=True)


def default_wheelhouse() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("EDGE_AGENT_WHEELHOUSE") or Path(cache) / "edge-agent" / "wheelhouse")


def run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"deb: failed ({proc.returncode}): {' '.join(argv[:8])} ...")
    return proc


# --- the lock -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    line: str  # "name==version" with its --hash options, as pip reads it
    name: str
    marker: str


def read_lock(path: Path = LOCK) -> list[Pin]:
    """uv's requirements format: `name==version ; marker \\` then `--hash=sha256:...` lines."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, hashes = line.split(" --hash=", 1) if " --hash=" in line else (line, "")
        if not hashes:
            raise SystemExit(f"deb: {path.name}: {spec} has no hash (refresh it: ./dev.sh lock)")
        req, _, marker = spec.partition(";")
        pins.append(Pin(f"{req.strip()} --hash={hashes}", req.split("==")[0].strip().lower(), marker.strip()))
    return pins


def marker_env(target: Target, machine: str) -> dict[str, str]:
    return {"python_version": target.python, "python_full_version": target.full, "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": machine, "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def pins_for(pins: list[Pin], target: Target, machine: str) -> list[str]:
    """The lock's lines whose markers hold on this target."""
    from packaging.markers import Marker

    env = marker_env(target, machine)
    return [p.line for p in pins if not p.marker or Marker(p.marker).evaluate(env)]


def platform_args(target: Target, machine: str) -> list[str]:
    """pip matches --platform literally: every manylinux tag the target's glibc accepts."""
    minor = int(target.glibc.split(".")[1])
    tags = [f"manylinux2014_{machine}"] + [f"manylinux_2_{n}_{machine}"
                                           for n in range(OLDEST_MANYLINUX_MINOR, minor + 1)]
    out = ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp",
           "--abi", "cp" + target.python.replace(".", "")]
    for tag in tags:
        out += ["--platform", tag]
    return out


def pip(*args: str) -> list[str]:
    # the device's or developer's pip settings (extra indexes, constraints) are not this build's
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--isolated", *args]


def fetch(wheelhouse: Path, arches: list[str]) -> None:
    """Every locked wheel of these architectures into the wheelhouse; offline when they are all there."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pins = read_lock()
    with tempfile.TemporaryDirectory(prefix="edge-agent-fetch-") as tmp:
        for arch in arches:
            for target in TARGETS:
                req = Path(tmp) / f"{arch}-{target.python}.txt"
                req.write_text("\n".join(pins_for(pins, target, MACHINES[arch])) + "\n")
                common = ["download", "--quiet", "--no-deps", "--require-hashes", "--dest", str(wheelhouse),
                          *platform_args(target, MACHINES[arch]), "-r", str(req)]
                local = subprocess.run(pip(*common, "--no-index", "--find-links", str(wheelhouse)),
                                       capture_output=True, text=True)
                if local.returncode == 0:
                    continue
                t = time.monotonic()
                run(pip(*common))
                log(f"fetched the CPython {target.python} {MACHINES[arch]} wheels in {time.monotonic() - t:.0f} s")


# --- the project's wheel --------------------------------------------------------------------------


def source_date_epoch() -> int:
    """The commit's time: every file in the wheel and the package carries it."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    proc = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True)
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else 0


def build_dists(out: Path, epoch: int) -> tuple[Path, Path]:
    """sdist, then the wheel from that sdist (what a user of the sdist gets), version from packaging/version_backend.

    The backend writes edge_agent/_version.py and setuptools build/ and cid_edge_agent.egg-info/ into the
    checkout; run from the checkout, Python finds that egg-info before the installed metadata, and the
    editable install reads that _version.py: a build with EDGE_AGENT_VERSION would make the developer's
    own agent report the package's version. So the checkout is put back as it was. `epoch`: every file's time
    (source_date_epoch()).
    """
    version_file = REPO / "edge_agent" / "_version.py"
    repo_id = hashlib.sha256(bytes(REPO)).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"cid-edge-agent-build-{repo_id}.lock"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    with open(lock_path, "w") as lock:  # one build at a time in this checkout (test workers, ./dev.sh deb)
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = version_file.read_bytes() if version_file.exists() else None
        try:
            run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)], env=env)
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


# --- the venv inside the package ------------------------------------------------------------------


def install_site(site: Path, target: Target, machine: str, wheelhouse: Path, project_wheel: Path,
                 req: Path) -> None:
    """The locked wheels and the project's, unpacked for one Python (pip --target, nothing compiled)."""
    common = ["install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--target", str(site),
              *platform_args(target, machine)]
    if req.read_text().strip():
        run(pip(*common, "--find-links", str(wheelhouse), "--require-hashes", "-r", str(req)))
    name, version = project_wheel.name.split("-")[:2]
    run(pip(*common, "--find-links", str(project_wheel.parent), f"{name}=={version}"))
    # pip --target puts console scripts and data files beside the packages: the package has its own
    for extra in ("bin", "share"):
        shutil.rmtree(site / extra, ignore_errors=True)


def link_duplicates(top: Path) -> int:
    """Files with the same content and mode become hard links of one (dpkg-deb stores them once); bytes saved."""
    seen: dict[tuple[str, int], Path] = {}
    saved = 0
    for path in sorted(p for p in top.rglob("*") if p.is_file() and not p.is_symlink()):
        st = path.stat()
        key = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
        first = seen.setdefault(key, path)
        if first is not path and first.stat().st_ino != st.st_ino:
            path.unlink()
            os.link(first, path)
            saved += st.st_size
    return saved


VENV_SCRIPT = """#!/usr/bin/python3 -s
# cid-edge-agent: the command, run by /usr/bin/edge-agent with the interpreter of this venv's run copy
import sys

from edge_agent.cli import main

sys.exit(main())
"""

# /usr/bin/edge-agent. The run copy is resolved once, at the start: the process's paths name that version's
# folder, not the `current` link, so a later upgrade (which repoints current) never mixes versions in it.
COMMAND = """#!/bin/sh
# cid-edge-agent: runs the version postinst made current (/usr/lib/edge-agent/current -> run/VERSION)
run=/usr/lib/edge-agent/$(readlink /usr/lib/edge-agent/current) \\
    || { echo "edge-agent: cid-edge-agent is not configured (dpkg --configure -a)" >&2; exit 70; }
exec "$run/bin/python3" -s "$run/bin/edge-agent" "$@"
"""


def stage_venv(root: Path, version: str, arch: str, wheelhouse: Path, project_wheel: Path,
               pins: list[Pin] | None = None) -> int:
    """The venv in root/usr/lib/edge-agent/VERSION: the locked wheels (`pins`, default the lock's) and the
    project's for every target Python; returns the bytes hard links saved."""
    top = root / LIB / version
    pins = read_lock() if pins is None else pins
    with tempfile.TemporaryDirectory(prefix="edge-agent-req-") as tmp:
        for target in TARGETS:
            req = Path(tmp) / f"{target.python}.txt"
            req.write_text("\n".join(pins_for(pins, target, MACHINES[arch])) + "\n")
            install_site(top / "lib" / f"python{target.python}" / "site-packages", target, MACHINES[arch],
                         wheelhouse, project_wheel, req)
    (top / "bin").mkdir(parents=True)
    # the device's own interpreter, whichever of 3.10..3.13 it is; its system packages stay visible
    # (python3-picamera2, python3-numpy), after this venv's own
    os.symlink("/usr/bin/python3", top / "bin" / "python3")
    os.symlink("python3", top / "bin" / "python")
    (top / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = true\n")
    (top / "bin" / "edge-agent").write_text(VENV_SCRIPT)
    (top / "bin" / "edge-agent").chmod(0o755)
    return link_duplicates(top)


# --- the package ----------------------------------------------------------------------------------


def unit_for_package(text: str) -> str:
    """The repository's unit with the installed paths: the program is /usr/bin/edge-agent."""
    text = text.replace("/opt/edge-agent/venv/bin/edge-agent", "/usr/bin/edge-agent")
    # the install steps in the header are those of a hand install; the package did them
    header, sep, body = text.partition("\n[Unit]")
    keep = [line for line in header.splitlines() if not line.startswith("#   ") and "Install" not in line]
    keep.insert(1, "# Installed by the cid-edge-agent package; local changes go in a drop-in (systemctl edit).")
    return "\n".join(keep) + sep + body


def copyright_file() -> str:
    return ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
            "Upstream-Name: edge-agent\n\n"
            "Files: *\nLicense: Apache-2.0\n"
            " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n\n"
            "Files: usr/lib/edge-agent/*/lib/*/site-packages/av.libs/* usr/lib/edge-agent/*/lib/*/site-packages/av/*\n"
            "License: LGPL-3+ and GPL-2+\n"
            " PyAV's wheels bundle FFmpeg built with libx264 and libx265 (GPL-2+). Distributing\n"
            " this package distributes them: see README.md, section \"Licence note\", for the\n"
            " obligations and for an LGPL-only build.\n\n"
            "Files: usr/lib/edge-agent/*/lib/*/site-packages/*\n"
            "License: various\n"
            " Each package carries its licence in its .dist-info folder.\n")


def installed_size_kib(root: Path) -> int:
    """As dpkg-gencontrol counts: each file's size rounded up to KiB (a hard link once), 1 per other entry."""
    total, inodes = 0, set()
    for path in root.rglob("*"):
        if path.relative_to(root).parts[0] == "DEBIAN":
            continue
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            if st.st_ino not in inodes:
                inodes.add(st.st_ino)
                total += -(-st.st_size // 1024)
        else:
            total += 1
    return total


def md5sums(root: Path) -> str:
    lines = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file():
            continue
        lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel.as_posix()}")
    return "\n".join(lines) + "\n"


def stage(root: Path, version: str) -> None:
    """Everything but the venv: units, the owner's first config, docs, the maintainer scripts."""
    def put(rel: str, content: str | bytes, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        p.chmod(mode)

    for unit in ("edge-agent.service", "edge-agent@.service"):
        put(f"usr/lib/systemd/system/{unit}", unit_for_package((REPO / "systemd" / unit).read_text()))
    put("usr/lib/sysusers.d/edge-agent.conf", (REPO / "systemd" / "edge-agent.sysusers").read_text())
    put("usr/lib/tmpfiles.d/edge-agent.conf", (DEBIAN / "tmpfiles.conf").read_text())
    # not a conffile: postinst copies it to /etc/edge-agent/config.yaml on the first install only
    put(f"usr/share/{NAME}/config.yaml", (DEBIAN / "config.yaml").read_text().replace("@VERSION@", version))
    (root / "etc/edge-agent/config.d").mkdir(parents=True)
    put("usr/bin/edge-agent", COMMAND, 0o755)
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
    for script in ("postinst", "prerm", "postrm"):
        put(f"DEBIAN/{script}", (DEBIAN / script).read_text().replace("@VERSION@", version), 0o755)


def finish(root: Path, arch: str, version: str, epoch: int) -> None:
    """control and md5sums once every file is in place; every time set to `epoch` (the commit's)."""
    control = (DEBIAN / "control.in").read_text()
    for key, value in (("@VERSION@", version), ("@ARCH@", arch), ("@INSTALLED_SIZE@", str(installed_size_kib(root)))):
        control = control.replace(key, value)
    (root / "DEBIAN" / "control").write_text(control)
    (root / "DEBIAN" / "md5sums").write_text(md5sums(root))
    for path in [root, *root.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def build_package(root: Path, deb: Path, compression: str, epoch: int) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(deb)], env=env)


def build(arch: str, out: Path, wheelhouse: Path, compression: str) -> Path:
    t0 = time.monotonic()
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="edge-agent-deb-") as tmp:
        work = Path(tmp)
        _, wheel = build_dists(work / "project", epoch)
        version = wheel.name.split("-")[1]
        log(f"built {wheel.name} (package version {version})")
        root = work / "root"
        saved = stage_venv(root, version, arch, wheelhouse, wheel)
        log(f"venv for CPython {', '.join(t.python for t in TARGETS)} staged; {saved / 1e6:.0f} MB of same files "
            "stored once (hard links)")
        stage(root, version)
        finish(root, arch, version, epoch)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"{NAME}_{version}_{arch}.deb"
        build_package(root, deb, compression, epoch)
    log(f"wrote {deb} ({deb.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t0:.0f} s")
    return deb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="every locked wheel into the wheelhouse (network only for those missing)")
    f.add_argument("--arch", choices=sorted(MACHINES), action="append")
    f.add_argument("--wheelhouse", type=Path, default=default_wheelhouse())
    b = sub.add_parser("build", help="the package from the wheelhouse, offline")
    b.add_argument("arch", choices=sorted(MACHINES))
    b.add_argument("--out", type=Path, default=REPO / "dist")
    b.add_argument("--wheelhouse", type=Path, default=default_wheelhouse())
    # zstd (every target's dpkg reads it): 107 MB in seconds; xz: 77 MB, the smaller download for each
    # device's upgrade, but 10+ minutes of one core here (a release build: --compression xz)
    b.add_argument("--compression", choices=("zstd", "xz", "gzip"), default="zstd")
    args = p.parse_args(argv)
    if args.command == "fetch":
        fetch(args.wheelhouse, args.arch or sorted(MACHINES))
        return 0
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("deb: dpkg-deb is missing (apt-get install dpkg)")
    print(build(args.arch, args.out, args.wheelhouse, args.compression))
    return 0


if __name__ == "__main__":
    sys.exit(main())
