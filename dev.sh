#!/usr/bin/env bash
# Set-up and the two everyday commands, from a clean clone on Debian / Ubuntu / Raspberry Pi OS:
#   ./dev.sh demo   install, start a local receiver, replay a sample video into it end to end
#   ./dev.sh test   install, lint, run the test suite (extra arguments go to pytest;
#                   ./dev.sh test -m "not slow" is the fast tier: the tests under ~1.5 s, under a minute)
#   ./dev.sh deb amd64|arm64        build dist/cid-edge-agent_<version>_<arch>.deb (offline-installable)
#   ./dev.sh deb-test amd64|arm64   install, upgrade, roll back and purge it in a clean Debian root (root)
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

# dist/cid-edge-agent_<version>_<arch>.deb with the wheels of that architecture inside (packaging/)
deb() {
    # a version given for the package (SETUPTOOLS_SCM_PRETEND_VERSION) is not the checkout's
    (unset SETUPTOOLS_SCM_PRETEND_VERSION; bootstrap)
    command -v dpkg-deb >/dev/null || die_usage "dpkg-deb is missing (apt-get install dpkg)"
    "$VENV/bin/python" packaging/build_deb.py "$@"
}

die_usage() { echo "$*" >&2; exit 64; }

case "${1:-}" in
    demo) shift; demo "$@" ;;
    test) shift; tests "$@" ;;
    setup) bootstrap "${TEST_PACKAGES[@]}" ;;
    deb) shift; [ $# -eq 1 ] || die_usage "usage: $0 deb amd64|arm64"; deb "$@" ;;
    deb-test) shift; [ $# -eq 1 ] || die_usage "usage: $0 deb-test amd64|arm64"; packaging/test-in-root.sh "$@" ;;
    *) echo "usage: $0 demo [VIDEO] | test [PYTEST ARGS] | setup | deb amd64|arm64 | deb-test amd64|arm64" >&2
       exit 64 ;;
esac
