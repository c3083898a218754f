#!/usr/bin/env bash
# The package under a real systemd: a clean Debian (or Ubuntu) root booted with `systemd-nspawn -b` (systemd as PID 1,
# a network namespace of its own: only its loopback), commands run inside with nsenter. What a chroot
# cannot show:
#   enable --now returns once the agent sent READY=1; STATUS= shows fps and the queue; the upload token
#   reaches the agent only through LoadCredential (its file stays root's, mode 0600); one config.d save plus
#   `systemctl reload` counts one applied reload; the hardening directives are applied to the process
#   (systemd-analyze security's score, NoNewPrivs, seccomp, no capabilities); an upgrade with apt restarts
#   the running agent on the new version; with no camera at boot the agent is READY and says source=away;
#   a camera that stalls after READY is retried while the agent stays up (the watchdog fed), and a hung
#   agent (SIGSTOP) is killed by the watchdog and restarted; `systemctl stop` ends with status 0.
#
#   sudo packaging/test-systemd.sh [bookworm|trixie|jammy|noble]      (./dev.sh systemd-test SUITE is the same)
#
# amd64 only (the host's architecture: systemd under qemu-user is not a device). Roots and packages are
# shared with packaging/test-in-root.sh (packaging/roots.sh). Exit 0 when every step passed.
set -euo pipefail

SUITE=${1:-bookworm}
case "$SUITE" in bookworm | trixie | jammy | noble) ;; *) echo "usage: $0 [bookworm|trixie|jammy|noble]" >&2; exit 64 ;; esac
ARCH=$(dpkg --print-architecture)
REPO=$(cd "$(dirname "$0")/.." && pwd)
TEST_NAME=systemd-test
# shellcheck source=packaging/roots.sh
. "$REPO/packaging/roots.sh"
ROOT="$CACHE/root-systemd-$SUITE-$ARCH"
TOKEN=test-token-5f2c
CEILING=2.5  # systemd-analyze security's exposure, as tests/test_systemd_unit.py holds the unit to offline
NSPAWN_PID="" PID1=""

inside() { nsenter -t "$PID1" -m -u -i -n -p -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@" </dev/null; }
prop() { inside systemctl show -P "$2" "$1"; }
metric() { # metric NAME{LABELS}: its value from the agent's /metrics, 0 when absent
    inside python3 -c 'import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9108/metrics", timeout=5).read().decode()
print(next((l.rsplit(" ", 1)[1] for l in text.splitlines() if l.startswith(sys.argv[1] + " ")), "0"))' "$1"
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: until the command succeeds
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "not within $limit s: $what"
    return 1
}

cleanup() {
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    fi
    umount_root
}

prepare() { # before the boot, in the chroot: OLD installed, the test's config, token, receiver, camera
    install_deb "$OLD_VERSION" || die "install $OLD_VERSION"
    mkdir -p "$ROOT/srv/edge-agent-test"
    # not /tmp: the booted container has a /tmp of its own
    cp "$DEBS/$(deb_name "$NEW_VERSION")" "$ROOT/srv/edge-agent-test/"
    cp "$REPO/sample_media/conveyor_720p30.mp4" "$ROOT/srv/edge-agent-test/"
    cat >"$ROOT/etc/edge-agent/config.yaml" <<'YAML'
device_id: systemd-test
source:
  kind: file
  path: /srv/edge-agent-test/conveyor_720p30.mp4
  realtime: true
  loop: true
upload:
  url: http://127.0.0.1:8700/cid
  token_file: upload-token
spool:
  dir: /var/lib/edge-agent/spool
  min_free_bytes: 0
http:
  port: 9108
YAML
    install -m 0600 /dev/null "$ROOT/etc/edge-agent/upload-token"
    printf '%s\n' "$TOKEN" >"$ROOT/etc/edge-agent/upload-token"
    mkdir -p "$ROOT/etc/systemd/system/edge-agent.service.d"
    printf '[Service]\nLoadCredential=upload-token:/etc/edge-agent/upload-token\n' \
        >"$ROOT/etc/systemd/system/edge-agent.service.d/token.conf"
    # a stand-in edge server: answers 200 and writes each request's Authorization header down
    cat >"$ROOT/srv/edge-agent-test/receiver.py" <<'PY'
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open("/srv/edge-agent-test/received.log", "a") as f:
            f.write(f"{self.path} {self.headers.get('Authorization')}\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


HTTPServer(("127.0.0.1", 8700), Handler).serve_forever()
PY
    printf '[Service]\nExecStart=/usr/bin/python3 /srv/edge-agent-test/receiver.py\n[Install]\nWantedBy=multi-user.target\n' \
        >"$ROOT/etc/systemd/system/test-receiver.service"
    in_root systemctl enable test-receiver.service >/dev/null 2>&1
    # a camera that stalls after READY: the tests' stand-in camera (MPEG-TS on a pipe, in real time), which
    # stops writing after 15 s and stays alive, as a hung camera does
    cp "$REPO/tests/stream_sample.py" "$ROOT/srv/edge-agent-test/"
    cat >"$ROOT/etc/edge-agent/stall.yaml" <<'YAML'
device_id: stall-test
source:
  kind: pipe
  command: /usr/lib/edge-agent/current/bin/python3 /srv/edge-agent-test/stream_sample.py /srv/edge-agent-test/conveyor_720p30.mp4 --loop --stall-after 15
  stall_s: 3
spool:
  min_free_bytes: 0
YAML
    # no camera at boot: a V4L2 device that does not exist (yet)
    cat >"$ROOT/etc/edge-agent/nocam.yaml" <<'YAML'
device_id: nocam-test
source:
  kind: v4l2
  path: /dev/video7
spool:
  min_free_bytes: 0
YAML
    mkdir -p "$ROOT/etc/systemd/system/edge-agent@stall.service.d"
    printf '[Service]\nWatchdogSec=8\n' >"$ROOT/etc/systemd/system/edge-agent@stall.service.d/watchdog.conf"
}

boot() {
    # systemd-nspawn keeps its mount propagation folder under /run; a container host's /run may be a disk
    mkdir -p /run/systemd/nspawn
    mountpoint -q /run/systemd/nspawn || mount -t tmpfs tmpfs /run/systemd/nspawn
    umount_root
    systemd-nspawn -D "$ROOT" -b --register=no --keep-unit --private-network --console=pipe -q \
        </dev/null >"$CACHE/nspawn-$SUITE.log" 2>&1 &
    NSPAWN_PID=$!
    local i
    for ((i = 0; i < 150; i++)); do
        PID1=$(ps -o pid= --ppid "$NSPAWN_PID" | head -1 | tr -d ' ' || true)  # none until it forked
        [ -n "$PID1" ] && [ "$(cat "/proc/$PID1/comm" 2>/dev/null)" = systemd ] && break
        kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$CACHE/nspawn-$SUITE.log" >&2; die "systemd-nspawn exited"; }
        sleep 0.2
    done
    [ "$(cat "/proc/$PID1/comm" 2>/dev/null)" = systemd ] || die "no systemd as the container's PID 1"
    local state=""
    for ((i = 0; i < 90; i++)); do  # until its bus answers, then until the boot is done
        state=$(inside timeout 90 systemctl is-system-running --wait 2>/dev/null || true)
        case "$state" in running | degraded) break ;; esac
        sleep 1
    done
    pass "booted $SUITE with systemd $(inside systemctl --version | head -1 | cut -d' ' -f2) as PID 1 (pid $PID1 here): $state"
}

main_pid_status() { inside grep -E '^(NoNewPrivs|Seccomp|CapEff):' "/proc/$(prop edge-agent.service MainPID)/status"; }
hardened() {
    local st
    st=$(main_pid_status)
    echo "$st"
    echo "$st" | grep -qP '^NoNewPrivs:\s+1$' && echo "$st" | grep -qP '^Seccomp:\s+2$' \
        && echo "$st" | grep -qP '^CapEff:\s+0+$'
}
exposure() {
    inside systemd-analyze security --no-pager edge-agent.service 2>&1 \
        | sed -n 's/.*Overall exposure level for edge-agent.service: \([0-9.]*\).*/\1/p'
}
exposure_low() { [ -n "$1" ] && python3 -c "import sys; sys.exit(0 if float('$1') <= $CEILING else 1)"; }
token_arrived() { grep -q " Bearer $TOKEN\$" "$ROOT/srv/edge-agent-test/received.log" 2>/dev/null; }
user_cannot_read_token() { ! inside runuser -u edge-agent -- cat /etc/edge-agent/upload-token; }
reloads_settled() { inside journalctl -u edge-agent --no-pager -q | grep -q "config reloaded live: detector.cooldown_s"; }
unchanged_said() { inside journalctl -u edge-agent -q --no-pager | grep -q 'config is unchanged'; }
applied_is() { [ "$(metric 'edge_agent_config_reloads_total{result="applied"}')" = "$1" ]; }
new_version_runs() {
    [ "$(prop edge-agent.service ActiveState)" = active ] && [ "$(prop edge-agent.service MainPID)" != "$OLD_PID" ] \
        && inside edge-agent --version | grep -qx "edge-agent $NEW_VERSION" \
        && inside journalctl -u edge-agent --no-pager -q | grep -q "started version=$NEW_VERSION"
}
nocam_ready_away() {
    local st
    st=$(prop edge-agent@nocam.service StatusText)
    echo "StatusText=$st"
    [ "$(prop edge-agent@nocam.service ActiveState)" = active ] && [ "$(prop edge-agent@nocam.service SubState)" = running ] \
        && case "$st" in *source=away*) true ;; *) false ;; esac
}
camera_away_said() { inside journalctl -u edge-agent@stall --no-pager -q | grep -q "source stalled"; }
agent_stayed_up() {
    [ "$(prop edge-agent@stall.service NRestarts)" = 0 ] && [ "$(prop edge-agent@stall.service ActiveState)" = active ]
}
watchdog_restarted() {
    [ "$(prop edge-agent@stall.service NRestarts)" -ge 1 ] \
        && inside journalctl -u edge-agent@stall --no-pager -q | grep -qi "watchdog timeout"
}
stopped_cleanly() {
    local r s c
    r=$(prop edge-agent.service Result) s=$(prop edge-agent.service ExecMainStatus) c=$(prop edge-agent.service ExecMainCode)
    echo "Result=$r ExecMainCode=$c ExecMainStatus=$s"
    [ "$r" = success ] && [ "$s" = 0 ] && [ "$c" = 1 ]
}

main_steps() {
    check "systemctl enable --now edge-agent returns once it is READY" inside timeout 90 systemctl enable --now edge-agent
    check "active (running) after READY=1" test "$(prop edge-agent.service SubState)" = running
    check "STATUS= shows fps and the queue: $(prop edge-agent.service StatusText)" \
        sh -c "echo '$(prop edge-agent.service StatusText)' | grep -q 'fps=.* queued='"
    check "the token reached the edge server through LoadCredential" wait_for 60 "a clip with the token" token_arrived
    check "the service user cannot read the token file itself" user_cannot_read_token
    check "hardening applied to the running process (NoNewPrivs, seccomp, no capabilities)" hardened
    SCORE=$(exposure)
    check "systemd-analyze security on the running unit: exposure ${SCORE:-?}, at most $CEILING" exposure_low "$SCORE"
    local applied0
    applied0=$(metric 'edge_agent_config_reloads_total{result="applied"}')
    printf 'detector:\n  cooldown_s: 7\n' >"$ROOT/etc/edge-agent/config.d/50-test.yaml"
    check "systemctl reload edge-agent" inside systemctl reload edge-agent
    check "the reload is applied" wait_for 20 "config reloaded live" reloads_settled
    inside systemctl reload edge-agent  # the same content again: nothing more to count
    wait_for 10 "the second reload seen" unchanged_said || true
    check "one save plus systemctl reload (twice) counted one reload" applied_is "$((${applied0%.*} + 1)).0"

    OLD_PID=$(prop edge-agent.service MainPID)
    check "upgrade with apt-get inside (no terminal, no network)" inside apt-get install -y -q --no-install-recommends \
        "/srv/edge-agent-test/$(deb_name "$NEW_VERSION")"
    check "the upgrade restarted the agent on $NEW_VERSION" wait_for 60 "the new version running" new_version_runs

    check "no camera at boot: edge-agent@nocam is READY (the camera retried in the process)" \
        inside timeout 60 systemctl start edge-agent@nocam
    check "... running, STATUS= says source=away" wait_for 15 "STATUS= with source=away" nocam_ready_away
    inside systemctl stop edge-agent@nocam || true

    check "a camera that stalls after READY: edge-agent@stall starts" inside timeout 90 systemctl start edge-agent@stall
    check "... the agent says the camera is away and retries it" wait_for 60 "the stall said" camera_away_said
    sleep $((3 * 8))  # three times WatchdogSec: an agent retrying its camera is no hang, and is not killed
    check "... and stays up, the watchdog fed, for three watchdog periods" agent_stayed_up
    inside kill -STOP "$(prop edge-agent@stall.service MainPID)"  # a hung agent: no WATCHDOG=1 any more
    check "a hung agent (SIGSTOP): the watchdog kills it and systemd restarts it" \
        wait_for 120 "a watchdog restart" watchdog_restarted
    inside systemctl stop edge-agent@stall || true

    check "systemctl stop edge-agent" inside timeout 60 systemctl stop edge-agent
    check "stopped with status 0" stopped_cleanly
}

main() {
    need_tools systemd-nspawn:systemd-container nsenter:util-linux
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock-systemd-$SUITE"
    flock -n 9 || die "another run holds $CACHE/.lock-systemd-$SUITE"
    trap cleanup EXIT
    build_base
    build_debs "$OLD_VERSION" "$NEW_VERSION"
    fresh_root
    prepare
    boot
    main_steps
    say "systemd-analyze security exposure: ${SCORE:-?}"
    cleanup
    NSPAWN_PID=""
    [ -n "${KEEP_ROOT:-}" ] || rm -rf "$ROOT"
    if [ "$FAILED" -ne 0 ]; then die "some steps failed (logs in $CACHE; journal: KEEP_ROOT=1)"; fi
    pass "all steps ($SUITE, systemd) in $((SECONDS - T0)) s"
}

main
