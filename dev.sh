#!/usr/bin/env bash
# Set-up and the two everyday commands, from a clean clone on Debian / Ubuntu / Raspberry Pi OS:
#   ./dev.sh demo   install, start a local receiver, replay a sample video into it end to end
#   ./dev.sh test   install, lint, run the test suite (extra arguments go to pytest;
#                   ./dev.sh test -m "not slow" is the fast tier: the tests under ~1.5 s, under a minute)
#   ./dev.sh deb amd64|arm64        build dist/cid-edge-agent_<version>_<arch>.deb from the locked wheels
#                                   (network only for wheels missing from the wheelhouse; none of the test tools)
#   ./dev.sh lock                   refresh packaging/*.lock on purpose (newest versions that fit), fetch them
#   ./dev.sh deb-test amd64|arm64 [bookworm|trixie|jammy|noble]   install, upgrade, roll back, purge in a clean root
#   ./dev.sh systemd-test [bookworm|trixie|jammy|noble]          the package under a real systemd (nspawn -b)
# Installs system packages with apt (only those missing; sudo when not root), makes ./.venv,
# and installs edge-agent into it with its test and receiver extras.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# what the agent and the demo need
SYSTEM_PACKAGES=(python3-venv python3-pip libzbar0)
# what only the tests need:
# postgresql: the tests start a throwaway PostgreSQL for the shared LDO index
# prometheus: its promtool checks /metrics and monitoring/alerts.yml in the tests
# ffmpeg: the tests check with ffprobe that clips show what their metadata says (the agent uses PyAV only)
# chromium, chromium-driver: the live view is tested in a real browser (Selenium, headless)
# strace: the spool's fsync and rename order is read from a real put's system calls
TEST_PACKAGES=(postgresql prometheus ffmpeg chromium chromium-driver strace)

bootstrap() {
    local missing=()
    for pkg in "${SYSTEM_PACKAGES[@]}" "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing system packages: ${missing[*]}" >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    # pip only when pyproject.toml changed since the last install: a second demo or test run starts at once
    [ "$VENV/.dev-installed" -nt pyproject.toml ] && return
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # this project was distributed as "edge-agent" before (a name PyPI gives to another project)
    if "$VENV/bin/python" -m pip show -q edge-agent >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip uninstall -q -y edge-agent
    fi
    "$VENV/bin/python" -m pip install -q -e ".[test,receiver]"
    touch "$VENV/.dev-installed"
}

demo() {
    bootstrap
    local data=${DEMO_DATA:-demo-data} port
    local video=${1:-sample_media/conveyor_720p30.mp4}
    # a free port from the OS (bind to port 0) unless DEMO_PORT names one
    port=${DEMO_PORT:-$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    mkdir -p "$data"
    "$VENV/bin/edge-agent" receiver --host 127.0.0.1 --port "$port" --data-dir "$data/receiver" 2>"$data/receiver.log" &
    RECEIVER_PID=$!
    trap 'kill "$RECEIVER_PID" 2>/dev/null; wait "$RECEIVER_PID" 2>/dev/null || true' EXIT
    # up means *our* server says it listens (it logs it once bound); another program answering on
    # that port must not pass for it, or the demo would queue its clips and deliver none
    local waited=0 limit=${DEMO_START_TIMEOUT:-60}
    until grep -q "receiver listening host=127.0.0.1 port=$port " "$data/receiver.log" 2>/dev/null; do
        if ! kill -0 "$RECEIVER_PID" 2>/dev/null || [ "$waited" -ge $((limit * 5)) ]; then
            local why
            why=$(grep -m1 -E "^edge-agent receiver: |ERROR|Error|error" "$data/receiver.log" \
                  | sed 's/^ERROR: *//; s/^edge-agent receiver: *//' || true)
            echo "dev.sh demo: the local edge server did not come up on 127.0.0.1:$port: ${why:-no answer within ${limit} s} (see $data/receiver.log; another port: DEMO_PORT=NNNN ./dev.sh demo)" >&2
            exit 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    echo "local edge server on http://127.0.0.1:$port (log: $data/receiver.log)"
    # the embedded defaults, with the one knob a demo needs: where to deliver
    EDGE_AGENT__UPLOAD__URL="http://127.0.0.1:$port/cid" EDGE_AGENT__SPOOL__DIR="$data/spool" \
        "$VENV/bin/edge-agent" replay "$video" --report "$data/report.json"
    echo "--- received by the local edge server (GET /cid/list):"
    "$VENV/bin/python" - "$port" "$data" <<'PY'
import json, sys, urllib.request
events = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/cid/list?limit=1000"))["events"]
for e in events:
    clip = (e.get("metadata") or {}).get("clip", {})
    print(f"  {e['cid']:<24} {e.get('size_bytes') or 0:>9} bytes  {clip.get('duration_s', '-')} s  sha256_ok={e.get('sha256_ok')}")
print(f"  {len(events)} CID(s) stored under {sys.argv[2]}/receiver")
PY
}

tests() {
    bootstrap "${TEST_PACKAGES[@]}"
    "$VENV/bin/ruff" check edge_agent tests sample_media benchmarks
    # bytecode caches on: the suite starts hundreds of edge-agent processes and four pytest workers,
    # and with PYTHONDONTWRITEBYTECODE set (some CI images do) each compiles the package and
    # rewrites every test module again (~5 s of CPU per worker, ~0.1 s per command)
    unset PYTHONDONTWRITEBYTECODE
    # most tests wait on real time (live sources, servers, subprocesses), not on the CPU: four workers
    # cut the suite from ~7.5 to ~2.7 minutes on 2 cores; one file stays on one worker (its fixtures)
    "$VENV/bin/python" -m pytest -q -n "${PYTEST_WORKERS:-4}" --dist loadfile "$@"
}

# The package's build happens outside the repository's .venv: a small venv of the build's own tools
# (packaging/build-tools.lock) and a wheelhouse of every locked wheel, both in the user's cache.
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent
export EDGE_AGENT_WHEELHOUSE=${EDGE_AGENT_WHEELHOUSE:-$CACHE_DIR/wheelhouse}
BUILD_VENV=${EDGE_AGENT_BUILD_VENV:-$CACHE_DIR/build-venv}
UV_VERSION=0.13.9  # the resolver of ./dev.sh lock (its output format is the locks')

build_venv() {
    [ -x "$BUILD_VENV/bin/python" ] || "$PY" -m venv "$BUILD_VENV"
    [ "$BUILD_VENV/.installed" -nt packaging/build-tools.lock ] && return
    mkdir -p "$EDGE_AGENT_WHEELHOUSE"
    local pip=("$BUILD_VENV/bin/python" -m pip --isolated --disable-pip-version-check -q)
    # from the wheelhouse when it has them (offline), else from the index into it; hashes checked either way
    "${pip[@]}" download --no-deps --require-hashes -r packaging/build-tools.lock -d "$EDGE_AGENT_WHEELHOUSE" \
        --no-index --find-links "$EDGE_AGENT_WHEELHOUSE" 2>/dev/null \
        || "${pip[@]}" download --no-deps --require-hashes -r packaging/build-tools.lock -d "$EDGE_AGENT_WHEELHOUSE"
    "${pip[@]}" install --no-deps --require-hashes --no-index --find-links "$EDGE_AGENT_WHEELHOUSE" \
        -r packaging/build-tools.lock
    touch "$BUILD_VENV/.installed"
}

# dist/cid-edge-agent_<version>_<arch>.deb: the venv for CPython 3.10-3.13 inside (packaging/build_deb.py)
deb() {
    command -v dpkg-deb >/dev/null || die_usage "dpkg-deb is missing (apt-get install dpkg)"
    build_venv
    "$BUILD_VENV/bin/python" packaging/build_deb.py fetch --arch "$1"
    "$BUILD_VENV/bin/python" packaging/build_deb.py build "$@"
}

# On purpose only: the newest versions that fit every target (one version of each package for all of
# CPython 3.10-3.13, wheels built for the numpy each OS ships), with the hash of every file; then fetched.
lock() {
    local uv_venv=$CACHE_DIR/uv-$UV_VERSION
    [ -x "$uv_venv/bin/uv" ] || { "$PY" -m venv "$uv_venv" && "$uv_venv/bin/pip" install -q "uv==$UV_VERSION"; }
    local compile=("$uv_venv/bin/uv" pip compile --quiet --universal --fork-strategy fewest --python-version 3.10
                   --generate-hashes --custom-compile-command "./dev.sh lock")
    # a fresh resolution: uv would otherwise keep the versions of the file it writes
    rm -f packaging/requirements.lock packaging/build-tools.lock
    "${compile[@]}" pyproject.toml --no-emit-package numpy -c packaging/os-numpy.txt -o packaging/requirements.lock
    "${compile[@]}" packaging/build-tools.in -o packaging/build-tools.lock
    build_venv
    "$BUILD_VENV/bin/python" packaging/build_deb.py fetch
    echo "locks refreshed: git diff packaging/*.lock shows what changed"
}

die_usage() { echo "$*" >&2; exit 64; }

case "${1:-}" in
    demo) shift; demo "$@" ;;
    test) shift; tests "$@" ;;
    setup) bootstrap "${TEST_PACKAGES[@]}" ;;
    deb) shift; [ $# -ge 1 ] || die_usage "usage: $0 deb amd64|arm64 [--out DIR]"; deb "$@" ;;
    lock) lock ;;
    deb-test) shift; [ $# -ge 1 ] || die_usage "usage: $0 deb-test amd64|arm64 [bookworm|trixie|jammy|noble]"
              packaging/test-in-root.sh "$@" ;;
    systemd-test) shift; packaging/test-systemd.sh "$@" ;;
    *) echo "usage: $0 demo [VIDEO] | test [PYTEST ARGS] | setup | deb amd64|arm64 | lock" \
            "| deb-test amd64|arm64 [SUITE] | systemd-test [SUITE]" >&2
       exit 64 ;;
esac
