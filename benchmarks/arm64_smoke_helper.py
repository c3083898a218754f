"""Helper of benchmarks/arm64_smoke.sh: the parts that are easier in Python than in shell.

Standard library only at import time, because one half runs on the x86 host (any Python >= 3.10,
no project install needed) and the other half, `probe`, runs inside the arm64 root under
qemu-aarch64-static, where only the installed aarch64 wheels exist.

    mirror SUITE                       the apt mirror this host already uses for SUITE (debootstrap's source)
    resolve DIR PYVER GLIBC WHEEL      pip download the aarch64 wheel set of WHEEL for CPython PYVER, glibc GLIBC
    wheels DIR [DIR...]                markdown table of the wheels in each DIR; non-zero if one is not aarch64
    check-replay REPORT MANIFEST NAME  non-zero unless the replay report holds exactly the manifest's CIDs
    wheel-encoders DIR [DIR...]        the H.264 encoders built into each PyAV wheel, read from its libavcodec
    probe VIDEO                        (inside the arm64 root) versions, H.264 encoders, zxing and zbar on a frame
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# manylinux2014 is glibc 2.17, the oldest tag an aarch64 wheel can carry.
OLDEST_MANYLINUX_MINOR = 17
# The H.264 encoders an edge device could use: the configured chain plus the usual others, to show what exists.
ENCODER_CANDIDATES = ("h264_v4l2m2m", "h264_nvenc", "libx264", "h264_omx", "h264_vaapi", "libopenh264")
# Where the sample's first code is fully in view (manifest: CID-7F3A9C21 from 3.2 s to 6.8 s).
PROBE_FRAME_T = 5.0


def log(msg: str) -> None:
    print(f"arm64-smoke: {msg}", file=sys.stderr, flush=True)


# --- host side ---------------------------------------------------------------------------------


def _apt_source_entries() -> list[tuple[str, list[str]]]:
    """(uri, suites) from both apt source formats: one-line sources.list and deb822 *.sources."""
    entries: list[tuple[str, list[str]]] = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], [words[2]]))
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                suites = fields.get("suites", "").split()
                entries.extend((uri, suites) for uri in fields.get("uris", "").split())
    return entries


def cmd_mirror(args: argparse.Namespace) -> int:
    """Print the mirror serving SUITE (not -updates/-security) so debootstrap uses the host's own source."""
    for uri, suites in _apt_source_entries():
        if args.suite in suites:
            print(uri.rstrip("/"))
            return 0
    log(f"no apt source for suite {args.suite} on this host; debootstrap will use its default mirror "
        "(set EDGE_AGENT_ARM64_MIRROR to choose one)")
    return 1


def platform_args(pyver: str, glibc: str) -> list[str]:
    """pip matches --platform literally: list every manylinux tag the target's glibc accepts."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2 or minor < OLDEST_MANYLINUX_MINOR:
        raise SystemExit(f"arm64-smoke: glibc {glibc} is older than manylinux2014 (2.17): no wheels can match")
    tags = ["manylinux2014_aarch64"] + [f"manylinux_2_{n}_aarch64" for n in range(OLDEST_MANYLINUX_MINOR, minor + 1)]
    abi = "cp" + pyver.replace(".", "")
    out = ["--only-binary=:all:", "--python-version", pyver, "--implementation", "cp", "--abi", abi]
    for tag in tags:
        out += ["--platform", tag]
    return out


def _requirements(wheel: Path) -> list[str]:
    """Requires-Dist of a wheel without extras markers, to test each dependency on its own."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(name).decode()
    reqs = []
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if "extra ==" not in req:
                reqs.append(req.split(";", 1)[0].strip())
    return reqs


def _pip_download(dest: Path, plat: list[str], reqs: list[str], no_deps: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d", str(dest), *plat]
    if no_deps:
        cmd.append("--no-deps")
    return subprocess.run(cmd + reqs, capture_output=True, text=True)


def cmd_resolve(args: argparse.Namespace) -> int:
    """Download the whole aarch64 set; on failure name every direct dependency that has no aarch64 wheel."""
    dest = Path(args.dir)
    plat = platform_args(args.pyver, args.glibc)
    label = f"cp{args.pyver.replace('.', '')} glibc {args.glibc}"
    started = time.monotonic()
    proc = _pip_download(dest, plat, [args.wheel])
    Path(str(dest) + ".pip.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode == 0:
        n = len(list(dest.glob("*.whl")))
        log(f"{label}: {n} wheels resolved in {time.monotonic() - started:.1f} s")
        return 0
    missing = []
    with_tmp = dest.parent / (dest.name + ".probe")
    for req in _requirements(Path(args.wheel)):
        one = _pip_download(with_tmp, plat, [req], no_deps=True)
        if one.returncode != 0:
            missing.append(req)
    why = re.findall(r"No matching distribution found for (\S+)", proc.stderr)
    log(f"{label}: the aarch64 wheel set does not resolve "
        f"(pip: no matching distribution for {', '.join(why) or 'see ' + str(dest) + '.pip.log'})")
    for req in missing:
        log(f"  {label}: no aarch64 wheel for {req}")
    return 1


def parse_wheel(name: str) -> tuple[str, str, str]:
    """(project, version, python-abi-platform tag) from a wheel file name (PEP 427)."""
    parts = name[: -len(".whl")].split("-")
    if len(parts) == 6:  # a build tag sits between version and python tag
        parts = parts[:2] + parts[3:]
    project, version, py, abi, plat = parts
    return project.replace("_", "-").lower(), version, f"{py}-{abi}-{plat}"


def cmd_wheels(args: argparse.Namespace) -> int:
    """One table across the wheel sets, so the versions each Python gets sit side by side."""
    sets = {Path(d).name: {parse_wheel(p.name)[0]: parse_wheel(p.name)[1:] for p in Path(d).glob("*.whl")}
            for d in args.dirs}
    names = sorted(set().union(*sets.values()))
    bad = []
    print("| package | " + " | ".join(f"{s} version | {s} tag" for s in sets) + " |")
    print("|---|" + "---|---|" * len(sets))
    for n in names:
        cells = []
        for s, wheels in sets.items():
            version, tag = wheels.get(n, ("-", "-"))
            cells += [version, f"`{tag}`" if tag != "-" else "-"]
            plat = tag.rsplit("-", 1)[-1]
            if tag != "-" and plat != "any" and "aarch64" not in plat:
                bad.append(f"{s}: {n} {tag}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    for b in bad:
        log(f"not an aarch64 wheel: {b}")
    return 1 if bad else 0


def cmd_wheel_encoders(args: argparse.Namespace) -> int:
    """For a wheel set no interpreter here can run (cp310): the encoder names compiled into its libavcodec.

    FFmpeg registers each codec by a string literal, so a name present in the library is a codec built in;
    on the cp311 wheel this scan gives the same answer as the probe run under emulation.
    """
    import zipfile

    for d in args.dirs:
        for wheel in sorted(Path(d).glob("av-*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                lib = next((n for n in zf.namelist() if re.search(r"/libavcodec[^/]*\.so", n)), None)
                if lib is None:
                    log(f"{wheel.name}: no bundled libavcodec")
                    continue
                data = zf.read(lib)
            have = [n for n in ENCODER_CANDIDATES if re.search(rb"(?<![\w])" + n.encode() + rb"(?![\w])", data)]
            absent = [n for n in ENCODER_CANDIDATES if n not in have]
            print(f"{Path(d).name} {wheel.name}: built in {', '.join(have) or 'none'}; "
                  f"not built in {', '.join(absent)}")
    return 0


def cmd_check_replay(args: argparse.Namespace) -> int:
    manifest = json.loads(Path(args.manifest).read_text())
    expected = next(v["cids"] for v in manifest["videos"] if v["file"] == args.name)
    try:
        report = json.loads(Path(args.report).read_text())
    except (OSError, ValueError) as exc:
        log(f"replay report unreadable: {exc}")
        return 1
    found = [e["cid"] for e in report.get("events", [])]
    clips = [e["clip"] for e in report.get("events", []) if e.get("clip") and not e["clip"].get("error")]
    sizes = sorted({f"{c.get('width')}x{c.get('height')}" for c in clips})
    writers, skipped = [], []
    if args.log:
        text = Path(args.log).read_text(errors="replace")
        writers = sorted(set(re.findall(r"clip ready .*? (remux|encoder=\S+)", text)))
        skipped = sorted(set(re.findall(r"encoder unavailable encoder=(\S+)", text)))
    log(f"replay: {report.get('frames')} frames in {report.get('elapsed_s')} s, CIDs {found}, "
        f"clips {len(clips)}/{len(found)} {sizes} written by {writers or '?'}"
        + (f", encoders that did not open: {skipped}" if skipped else ""))
    if sorted(found) != sorted(expected) or len(clips) != len(expected):
        log(f"FAIL: expected CIDs {expected}, each with a clip")
        return 1
    return 0


# --- target side (runs inside the arm64 root) ---------------------------------------------------


def _encoder_status(name: str) -> str:
    """Whether this PyAV build has the encoder and whether it opens and encodes here."""
    import io

    import av
    import numpy as np

    try:
        av.Codec(name, "w")
    except Exception:  # noqa: BLE001 - PyAV raises several types for an unknown codec
        return "absent from this PyAV build"
    buf = io.BytesIO()
    try:
        with av.open(buf, "w", format="mp4") as out:
            stream = out.add_stream(name, rate=30)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            rgb = np.zeros((240, 320, 3), dtype=np.uint8)
            for i in range(10):
                rgb[:, :, 1] = i * 20
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts = i
                for pkt in stream.encode(frame):
                    out.mux(pkt)
            for pkt in stream.encode(None):
                out.mux(pkt)
    except Exception as exc:  # noqa: BLE001 - report whatever the device says
        return f"present, does not open here ({type(exc).__name__}: {str(exc)[:120]})"
    return f"present, opens and encodes ({len(buf.getvalue())} bytes for 10 frames)"


def _gray_at(video: str, t: float):
    import av

    with av.open(video) as c:
        stream = c.streams.video[0]
        for frame in c.decode(stream):
            if frame.time is not None and frame.time >= t:
                return frame.to_ndarray(format="gray")
    raise SystemExit(f"arm64-smoke: {video} has no frame at {t} s")


def cmd_probe(args: argparse.Namespace) -> int:
    import ctypes
    import ctypes.util
    import platform
    from importlib import metadata

    import av

    print(f"python {platform.python_version()} machine {platform.machine()} libc {' '.join(platform.libc_ver())}")
    for dist in ("cid-edge-agent", "av", "numpy", "opencv-python-headless", "zxing-cpp", "pyzbar", "pydantic",
                 "watchdog"):
        print(f"  {dist} {metadata.version(dist)}")
    avcodec = ".".join(str(n) for n in av.library_versions.get("libavcodec", ()))
    print(f"PyAV {av.__version__}, libavcodec {avcodec}")
    h264 = sorted(c for c in av.codecs_available if "264" in c)
    print(f"H.264 codecs in this PyAV: {', '.join(h264)}")
    for name in ENCODER_CANDIDATES:
        print(f"  encoder {name}: {_encoder_status(name)}")

    gray = _gray_at(args.video, PROBE_FRAME_T)
    from edge_agent.pipeline.qr_detector import make_decoder

    _, zxing = make_decoder("zxing")
    zxing_payloads = [c.payload.decode() for c in zxing(gray)]
    print(f"zxing-cpp on the frame at {PROBE_FRAME_T} s: {zxing_payloads}")

    found = ctypes.util.find_library("zbar")
    try:
        ctypes.CDLL("libzbar.so.0")
        print("libzbar.so.0 loads (libzbar0 from the arm64 root)")
    except OSError as exc:
        print(f"FAIL: libzbar.so.0 does not load: {exc}")
        return 1
    if found is None:
        # ctypes.util.find_library runs `ldconfig -p` in a child process; under qemu-user without binfmt
        # the child cannot start, so pyzbar's lookup fails here although the library is there. Hand
        # pyzbar the soname so its decoding is still tested; on a device the lookup itself works.
        import pyzbar.zbar_library

        pyzbar.zbar_library.find_library = lambda name: "libzbar.so.0" if name == "zbar" else None
        print("note: find_library('zbar') is None under emulation (it runs `ldconfig -p`, an aarch64 child "
              "process); pyzbar is handed the soname instead")
    _, zbar = make_decoder("zbar")
    payloads = [c.payload.decode() for c in zbar(gray)]
    print(f"zbar (pyzbar) on the frame at {PROBE_FRAME_T} s: {payloads}")
    if not payloads or payloads != zxing_payloads:
        print("FAIL: zbar and zxing-cpp should both read the one code in view")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("mirror")
    s.add_argument("suite")
    s.set_defaults(func=cmd_mirror)
    s = sub.add_parser("resolve")
    s.add_argument("dir")
    s.add_argument("pyver")
    s.add_argument("glibc")
    s.add_argument("wheel")
    s.set_defaults(func=cmd_resolve)
    s = sub.add_parser("wheels")
    s.add_argument("dirs", nargs="+")
    s.set_defaults(func=cmd_wheels)
    s = sub.add_parser("wheel-encoders")
    s.add_argument("dirs", nargs="+")
    s.set_defaults(func=cmd_wheel_encoders)
    s = sub.add_parser("check-replay")
    s.add_argument("report")
    s.add_argument("manifest")
    s.add_argument("name")
    s.add_argument("--log", help="the replay's log, for which encoder wrote each clip")
    s.set_defaults(func=cmd_check_replay)
    s = sub.add_parser("probe")
    s.add_argument("video")
    s.set_defaults(func=cmd_probe)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
