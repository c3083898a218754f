#!/usr/bin/env bash
# edge-agent on 64-bit ARM, proven from an x86 Debian/Ubuntu host: builds a Debian arm64 root (Raspberry Pi OS
# bookworm has the same Python 3.11 and glibc 2.36), installs the project's aarch64 wheels into it, and runs
# `edge-agent replay` on sample_media/conveyor_720p30.mp4 under qemu-aarch64-static, called explicitly (no
# binfmt registration needed). It also resolves the cp310 aarch64 wheel set for Jetson (JetPack 6: Ubuntu 22.04,
# Python 3.10, glibc 2.35), lists the encoders the aarch64 PyAV offers, and checks pyzbar with the arm64 libzbar0.
#
# Needs: root (debootstrap, chroot), and the apt packages debootstrap, qemu-user-static and
# debian-archive-keyring; installed here with apt-get when missing. Network: the host's apt mirror and pip index.
# Not part of CI: a first run takes a few minutes (debootstrap), later runs reuse the root.
#
#   sudo benchmarks/arm64_smoke.sh          exit 0 when the replay under emulation finds the manifest's 3 CIDs
#
# Environment:
#   EDGE_AGENT_ARM64_CACHE   work and cache folder (default /var/tmp/edge-agent-arm64); the root is kept and
#                            reused; delete the folder (or rootfs-*/.edge-agent-base) to build it again
#   EDGE_AGENT_ARM64_SUITE   Debian suite of the root (default bookworm)
#   EDGE_AGENT_ARM64_MIRROR  Debian mirror for debootstrap (default: the host's apt source for that suite)
#   EDGE_AGENT_ARM64_REENCODE  1 (default): also replay with a resize, so clips go through clip.encoders
#                            (70-110 s under emulation on 2 cores); 0: only the default remux replay
#   JETSON_PYTHON, JETSON_GLIBC   the second wheel set to resolve (default 3.10 and 2.35: JetPack 6)
#   PYTHON                   host interpreter whose pip builds and downloads the wheels (default python3)
#
# Under emulation a process cannot start an aarch64 child (no binfmt), so nothing inside the root runs pip,
# dpkg or ldconfig: debootstrap's second stage is replaced by unpacking its debs, and pip runs on the host
# with --platform/--target.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
HELPER_SRC="$REPO/benchmarks/arm64_smoke_helper.py"
CACHE=${EDGE_AGENT_ARM64_CACHE:-/var/tmp/edge-agent-arm64}
SUITE=${EDGE_AGENT_ARM64_SUITE:-bookworm}
JETSON_PYTHON=${JETSON_PYTHON:-3.10}
JETSON_GLIBC=${JETSON_GLIBC:-2.35}
PYTHON=${PYTHON:-python3}
VIDEO_NAME=conveyor_720p30.mp4
ROOT="$CACHE/rootfs-$SUITE-arm64"
QEMU=/usr/bin/qemu-aarch64-static
T0=$SECONDS

say() { echo "arm64-smoke: $*" >&2; }
die() { say "$*"; exit 1; }
step() { say "[$((SECONDS - T0)) s] $*"; }

# Run an aarch64 program inside the root under emulation with a clean environment (none of the host's leaks in);
# leading NAME=VALUE arguments are added to that environment.
arm() {
    local vars=()
    while [[ ${1:-} == *=* ]]; do vars+=("$1"); shift; done
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PYTHONDONTWRITEBYTECODE=1 "${vars[@]}" chroot "$ROOT" /usr/bin/qemu-aarch64-static "$@"
}

need_tools() {
    [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it): sudo $0"
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ -x "$QEMU" ] || missing+=(qemu-user-static)
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON to an interpreter with pip)"
}

# debootstrap --foreign unpacks only the essential packages; python3 and libzbar0 stay as debs in the root's
# apt cache (the second stage would install them by running dpkg inside, which emulation cannot do). Unpack
# them with tar keeping the merged-/usr links (bin, lib, sbin -> usr/...) that a plain dpkg-deb -x replaces.
build_root() {
    if [ -e "$ROOT/.edge-agent-base" ]; then
        step "reusing the arm64 root $ROOT"
        return
    fi
    local mirror=${EDGE_AGENT_ARM64_MIRROR:-$("$PYTHON" "$HELPER_SRC" mirror "$SUITE" || true)}
    step "debootstrap $SUITE arm64 (minbase + python3, libzbar0) from ${mirror:-the default mirror of debootstrap}"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,libzbar0 \
        "$SUITE" "$ROOT" ${mirror:+"$mirror"} >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    local pkg deb n=0 base
    read -r -a base <"$ROOT/debootstrap/base"  # one line, space-separated package names
    for pkg in "${base[@]}"; do
        deb=$(awk -v p="$pkg" '$1 == p { print $2 }' "$ROOT/debootstrap/debpaths")
        [ -n "$deb" ] || die "debootstrap listed $pkg but did not download it"
        dpkg-deb --fsys-tarfile "$ROOT$deb" | tar -x --keep-directory-symlink -C "$ROOT"
        n=$((n + 1))
    done
    local d
    for d in bin lib sbin; do
        if [ ! -L "$ROOT/$d" ]; then  # an older tar or a package shipping the real folder: merge it back
            cp -a "$ROOT/$d/." "$ROOT/usr/$d/" && rm -rf "${ROOT:?}/$d" && ln -s "usr/$d" "$ROOT/$d"
        fi
    done
    step "unpacked $n packages beyond the essential set"
    touch "$ROOT/.edge-agent-base"
}

# The project's own wheel is pure Python: build it on the host from a clean copy of the sources (an in-tree
# build could package stale files from build/).
build_project_wheel() {
    local src="$CACHE/src"
    rm -rf "$src" "$CACHE/wheels"
    mkdir -p "$src" "$CACHE/wheels/project"
    tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' --exclude=sample_media \
        --exclude=__pycache__ --exclude=demo-data --exclude=clips -cf - . | tar -C "$src" -xf -
    "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$CACHE/wheels/project" "$src" \
        >"$CACHE/wheel-build.log" 2>&1 || { tail -20 "$CACHE/wheel-build.log" >&2; die "could not build the wheel"; }
    WHEEL=$(ls "$CACHE"/wheels/project/cid_edge_agent-*.whl)
}

install_into_root() {
    local site="$ROOT/usr/local/lib/python$PYVER/dist-packages" stage="$CACHE/stage"
    rm -rf "$site" "$stage" "$ROOT/usr/local/bin/edge-agent"
    # shellcheck disable=SC2046  # the helper prints one pip option a line
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-warn-conflicts --root-user-action=ignore \
        --no-index --find-links "$CACHE/wheels/cp$PYTAG" $(platform_args "$PYVER" "$GLIBC") \
        --target "$stage" "$WHEEL" >"$CACHE/install.log" 2>&1 \
        || { tail -20 "$CACHE/install.log" >&2; die "pip could not install the aarch64 wheels"; }
    # pip --target writes the console script with the host's interpreter; on the device it is /usr/bin/python3
    mkdir -p "$ROOT/usr/local/bin" "$(dirname "$site")"
    sed '1s|^#!.*|#!/usr/bin/python3|' "$stage/bin/edge-agent" >"$ROOT/usr/local/bin/edge-agent"
    chmod 755 "$ROOT/usr/local/bin/edge-agent"
    rm -rf "${stage:?}/bin"
    mv "$stage" "$site"
}

platform_args() {
    "$PYTHON" - "$1" "$2" "$HELPER_SRC" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("h", sys.argv[3]); h = importlib.util.module_from_spec(spec)
spec.loader.exec_module(h)
print("\n".join(h.platform_args(sys.argv[1], sys.argv[2])))
PY
}

# Runs a replay inside the root; $1 = label, the rest = extra `env` assignments for the agent's config.
replay() {
    local label=$1 out="/var/tmp/edge-agent-smoke/$1"
    shift
    rm -rf "${ROOT:?}$out"
    local t=$SECONDS rc=0
    arm "$@" /usr/bin/python3 /usr/local/bin/edge-agent replay "/srv/edge-agent-smoke/$VIDEO_NAME" \
        --no-upload --output-dir "$out" --report "$out.report.json" -q 2>"$CACHE/replay-$label.log" || rc=$?
    REPLAY_S[$label]=$((SECONDS - t))
    [ "$rc" -eq 0 ] || { tail -20 "$CACHE/replay-$label.log" >&2; say "replay ($label) exited $rc"; }
    "$PYTHON" "$HELPER_SRC" check-replay "$ROOT$out.report.json" "$REPO/sample_media/manifest.json" "$VIDEO_NAME" \
        --log "$CACHE/replay-$label.log" && [ "$rc" -eq 0 ]
}

main() {
    need_tools
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock -n 9 || die "another run holds $CACHE/.lock"
    [ -f "$REPO/sample_media/$VIDEO_NAME" ] || die "sample_media/$VIDEO_NAME is missing"

    build_root
    cp "$QEMU" "$ROOT/usr/bin/qemu-aarch64-static"  # static: runs in the chroot without host libraries
    local info
    info=$(arm /usr/bin/python3 -c 'import platform; print(platform.python_version(), platform.libc_ver()[1])') \
        || die "the arm64 python3 does not start under $QEMU"
    PYVER=$(echo "$info" | awk '{ split($1, v, "."); print v[1] "." v[2] }')
    GLIBC=$(echo "$info" | awk '{ print $2 }')
    PYTAG=${PYVER/./}
    step "arm64 root: Python $(echo "$info" | awk '{ print $1 }'), glibc $GLIBC"

    build_project_wheel
    step "built $(basename "$WHEEL")"
    local failed=0
    "$PYTHON" "$HELPER_SRC" resolve "$CACHE/wheels/cp$PYTAG" "$PYVER" "$GLIBC" "$WHEEL" \
        || die "no complete aarch64 wheel set for Python $PYVER (see above)"
    if [ "$JETSON_PYTHON" != "$PYVER" ]; then
        "$PYTHON" "$HELPER_SRC" resolve "$CACHE/wheels/cp${JETSON_PYTHON/./}" "$JETSON_PYTHON" "$JETSON_GLIBC" \
            "$WHEEL" || failed=1
        if grep -q "^Package: python$JETSON_PYTHON\$" "$ROOT"/var/lib/apt/lists/*_Packages 2>/dev/null; then
            say "note: Debian $SUITE arm64 has python$JETSON_PYTHON; this script only resolves its wheel set"
        else
            say "note: Debian $SUITE arm64 has no python$JETSON_PYTHON package: the cp${JETSON_PYTHON/./} set is" \
                "resolved, not run"
        fi
    fi
    step "resolved the wheel sets"

    install_into_root
    mkdir -p "$ROOT/srv/edge-agent-smoke" "$ROOT/opt/edge-agent-smoke"
    cp "$REPO/sample_media/$VIDEO_NAME" "$ROOT/srv/edge-agent-smoke/"
    cp "$HELPER_SRC" "$ROOT/opt/edge-agent-smoke/"
    step "installed edge-agent and its aarch64 wheels into $ROOT"

    local t=$SECONDS
    arm /usr/bin/python3 /opt/edge-agent-smoke/arm64_smoke_helper.py probe "/srv/edge-agent-smoke/$VIDEO_NAME" \
        >"$CACHE/probe.txt" 2>&1 || failed=1
    sed 's/^/  /' "$CACHE/probe.txt" >&2
    step "probe took $((SECONDS - t)) s"

    declare -gA REPLAY_S=()
    # the default path: an H.264 camera's packets are remuxed into clips
    replay remux || failed=1
    step "replay (remux, the default) took ${REPLAY_S[remux]} s under emulation"
    if [ "${EDGE_AGENT_ARM64_REENCODE:-1}" != 0 ]; then
        # a resize forces re-encoding through the default clip.encoders chain: which encoder ends up writing?
        replay reencode EDGE_AGENT__CLIP__WIDTH=640 EDGE_AGENT__CLIP__HEIGHT=360 || failed=1
        step "replay (re-encode to 640x360) took ${REPLAY_S[reencode]} s under emulation"
    fi

    say "wheel sets (also in $CACHE/wheels.md):"
    local dirs=("$CACHE/wheels/cp$PYTAG")
    if [ "$JETSON_PYTHON" != "$PYVER" ]; then dirs+=("$CACHE/wheels/cp${JETSON_PYTHON/./}"); fi
    "$PYTHON" "$HELPER_SRC" wheels "${dirs[@]}" | tee "$CACHE/wheels.md" || failed=1
    "$PYTHON" "$HELPER_SRC" wheel-encoders "${dirs[@]}" >&2 || failed=1
    if [ "$failed" -ne 0 ]; then
        die "FAILED after $((SECONDS - T0)) s (logs in $CACHE)"
    fi
    step "PASS: edge-agent runs on aarch64 (Python $PYVER, glibc $GLIBC) in $((SECONDS - T0)) s"
}

main "$@"
