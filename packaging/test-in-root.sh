#!/usr/bin/env bash
# Proves the Debian package in a clean Debian (or Ubuntu) root as a fleet uses it: apt-get and nothing else, no
# network, no terminal (as Ansible and unattended-upgrades run it), never a --force-conf* option.
#
#   sudo packaging/test-in-root.sh amd64|arm64 [bookworm|trixie|jammy|noble]    (./dev.sh deb-test ARCH SUITE)
#
# 1. A cached clean root (packaging/roots.sh): minbase + systemd, the Depends in apt's cache.
# 2. Two builds of this checkout, OLD and NEW (EDGE_AGENT_VERSION), whose owner's config templates differ,
#    as two releases' would: a conffile would make dpkg ask on the upgrade.
# 3. In a fresh copy of the root, offline: install OLD -> user, state, /usr/bin/edge-agent, units, the
#    owner's config created (not a conffile), dpkg --verify, Installed-Size; the venv imports the OS's
#    numpy and python3-scipy (a Debian extension built on it, as picamera2's simplejpeg is);
#    the owner edits config.yaml and adds a config.d fragment; `check` as root and as the user; replay
#    finds the sample's CIDs; clips queued for a dead server. An agent process (no systemd) keeps running
#    across the upgrade and can still import what it had not imported. Upgrade to NEW and roll back to
#    OLD: rc 0, state ii, every edit kept, dpkg and the agent show the same version, queue kept.
#    remove keeps config and spool; purge leaves nothing but the system user (as Debian keeps it).
# Exit 0 when every step passed; each step prints PASS/FAIL and the time since the start.
#
# Environment: EDGE_AGENT_ROOT_CACHE (cache folder), EDGE_AGENT_MIRROR (Debian mirror for debootstrap),
# OLD_VERSION / NEW_VERSION, DEBS (where the two packages are built, default $EDGE_AGENT_ROOT_CACHE/debs),
# REBUILD=1 (build them again), KEEP_ROOT=1 (leave the test root for inspection).
set -euo pipefail

ARCH=${1:-}
SUITE=${2:-bookworm}
case "$ARCH" in amd64 | arm64) ;; *) echo "usage: $0 amd64|arm64 [bookworm|trixie|jammy|noble]" >&2; exit 64 ;; esac
case "$SUITE" in bookworm | trixie | jammy | noble) ;; *) echo "usage: $0 amd64|arm64 [bookworm|trixie|jammy|noble]" >&2; exit 64 ;; esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
TEST_NAME=deb-test
# shellcheck source=packaging/roots.sh
. "$REPO/packaging/roots.sh"
ROOT="$CACHE/root-deb-$SUITE-$ARCH"

TEST_CONFIG='# the root test: a sample file as the camera, an edge server that is not there
device_id: root-test
source:
  kind: file
  path: /srv/edge-agent-test/conveyor_720p30.mp4
upload:
  url: http://127.0.0.1:9/cid
spool:
  dir: /var/lib/edge-agent/spool
'
FRAGMENT='# a fleet fragment
site: hall-2
'

queued_clips() { as_user edge-agent spool status --config /etc/edge-agent/config.yaml --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["clips"])'; }
queued_is() { [ "$(queued_clips)" = "$1" ] || { echo "queued: $(queued_clips), expected $1"; return 1; }; }
edits_kept() {
    in_root cat /etc/edge-agent/config.yaml | cmp - <(printf '%s' "$TEST_CONFIG") \
        && in_root cat /etc/edge-agent/config.d/50-hall.yaml | cmp - <(printf '%s' "$FRAGMENT")
}
no_conffile() { [ -z "$(in_root dpkg-query -W -f '${Conffiles}' cid-edge-agent)" ]; }
first_config_created() { # postinst created the owner's config.yaml (no conffile) and config.d/
    [ -f "$ROOT/etc/edge-agent/config.yaml" ] && [ -d "$ROOT/etc/edge-agent/config.d" ] && no_conffile
}
only_version() { # /usr/lib/edge-agent holds VERSION, its run copy and current -> it (others only while in use)
    local have
    have=$(in_root ls -A /usr/lib/edge-agent | tr '\n' ' ')
    [ "$have" = "$1 current run " ] || { echo "/usr/lib/edge-agent: $have"; return 1; }
    [ "$(in_root ls -A /usr/lib/edge-agent/run)" = "$1" ] || { echo "run: $(in_root ls -A /usr/lib/edge-agent/run)"; return 1; }
    [ "$(in_root readlink /usr/lib/edge-agent/current)" = "run/$1" ]
}
state_after() { # state_after WHAT VERSION QUEUED
    check "after the $1: package state ii" status_is_ii
    check "after the $1: dpkg and edge-agent --version both say $2" version_is "$2"
    check "after the $1: config.yaml and the config.d fragment unchanged" edits_kept
    check "after the $1: still no conffile" no_conffile
    check "after the $1: $3 clip(s) still queued" queued_is "$3"
    check "after the $1: dpkg --verify finds every file as shipped" in_root dpkg --verify cid-edge-agent
}

spool_check() { # spool_check WHO: `edge-agent check` as root or as the user; PASS when its spool line passes
    local who=$1 out="$CACHE/check-$SUITE-$ARCH-$1.json"
    if [ "$who" = root ]; then
        in_root edge-agent check --config /etc/edge-agent/config.yaml --frames 30 --json >"$out" 2>&1 || true
    else
        as_user edge-agent check --config /etc/edge-agent/config.yaml --frames 30 --json >"$out" 2>&1 || true
    fi
    python3 - "$out" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
try:
    results = json.loads(text[text.index("{"):])["results"]
except ValueError:
    sys.exit(f"no JSON from check:\n{text}")
for r in results:
    print(f"{r['status']:<5} {r['name']}: {r['detail']}")
spool = [r for r in results if r["name"] == "spool"]
sys.exit(0 if spool and spool[0]["status"] == "PASS" else 1)
PY
}

installed_size_matches() { # Installed-Size (KiB) within 5% of what the package's files take on disk
    local declared used
    declared=$(in_root dpkg-query -W -f '${Installed-Size}' cid-edge-agent)
    used=$(in_root sh -c 'dpkg -L cid-edge-agent | while read -r f; do [ -f "$f" ] && [ ! -L "$f" ] && echo "$f"; done \
        | xargs stat -c "%i %s" | sort -u | awk "{ s += int((\$2 + 1023) / 1024) } END { print s }"')
    echo "Installed-Size ${declared} KiB, files ${used} KiB"
    [ $((declared * 100)) -ge $((used * 95)) ] && [ $((declared * 100)) -le $((used * 105 + 100000)) ]
}

uses_the_os_numpy() {
    in_root /usr/lib/edge-agent/current/bin/python3 -c '
import numpy, scipy.ndimage, cv2, av, zxingcpp, edge_agent
assert numpy.__file__.startswith("/usr/lib/python3/dist-packages/"), numpy.__file__
assert edge_agent.__file__.startswith("/usr/lib/edge-agent/"), edge_agent.__file__
import numpy as np
print("numpy", numpy.__version__, "scipy", scipy.__version__, "cv2", cv2.__version__, "av", av.__version__)
print(scipy.ndimage.uniform_filter(np.arange(9.0).reshape(3, 3), 3).shape, cv2.resize(np.zeros((4, 4), np.uint8), (2, 2)).shape)
'
}

# A process of the installed version (no systemd to restart it), started as /usr/bin/edge-agent starts one,
# that imports a module only after the upgrade: it must find the old version's code. It maps
# pydantic_core's library, as the agent does, which is how postinst knows its files are in use.
start_old_process() {
    rm -f "$ROOT/tmp/go" "$ROOT/tmp/old.out"
    mkfifo "$ROOT/tmp/go"
    in_root sh -c 'run=/usr/lib/edge-agent/$(readlink /usr/lib/edge-agent/current); exec "$run/bin/python3" -s -c "
import pydantic_core, edge_agent
open(\"/tmp/go\").read()
import edge_agent.commands.snapshot as late
print(edge_agent.__version__, late.__file__, flush=True)
" >/tmp/old.out 2>&1' &
}
old_process_still_works() {
    local i
    echo go >"$ROOT/tmp/go"
    for ((i = 0; i < 150; i++)); do [ -s "$ROOT/tmp/old.out" ] && break; sleep 0.2; done
    grep -q "^$OLD_VERSION /usr/lib/edge-agent/run/$OLD_VERSION/lib/python3" "$ROOT/tmp/old.out" \
        || { cat "$ROOT/tmp/old.out"; return 1; }
}

no_trace() { # purge leaves nothing of the package but its system user and group
    local left
    left=$(in_root find / -xdev \( -path /proc -o -path /dev -o -path /tmp -o -path /var/cache/apt \) -prune \
        -o \( -name '*edge-agent*' -o -name '*edge_agent*' \) -print | grep -v '^/var/lib/dpkg/' || true)
    [ -z "$left" ] || { echo "left behind:"; echo "$left"; return 1; }
    in_root getent passwd edge-agent >/dev/null || { echo "the system user was removed"; return 1; }
}

footprint() { # what the package adds to the clean root, with apt's default (recommends) and without
    local sim with
    sim=$(in_root apt-get install -s "/tmp/$(deb_name "$OLD_VERSION")" 2>/dev/null || true)
    with=$(grep -c '^Inst ' <<<"$sim" || true)
    FOOTPRINT="apt-get install with Recommends would add $with packages"
    if grep -qE '^Inst (ghostscript|imagemagick)' <<<"$sim"; then
        FOOTPRINT+=" (ImageMagick/Ghostscript among them, through libzbar0's Recommends)"
    fi
}

root_mb() { # the root's size, without apt's downloaded packages and this test's files
    du -sxm --exclude="$ROOT/proc" --exclude="$ROOT/dev" --exclude="$ROOT/tmp" \
        --exclude="$ROOT/var/cache/apt" --exclude="$ROOT/var/lib/apt/lists" "$ROOT" | cut -f1
}

main_steps() {
    local queued pkgs0 pkgs1 du0 du1
    cp "$DEBS/$(deb_name "$OLD_VERSION")" "$ROOT/tmp/"
    footprint
    pkgs0=$(in_root dpkg-query -W -f '${db:Status-Abbrev}\n' | grep -c '^ii')
    du0=$(root_mb)

    # --- install, offline ---
    if install_deb "$OLD_VERSION"; then pass "apt-get install ./$(deb_name "$OLD_VERSION") offline in $INSTALL_S s"
    else fail "install $OLD_VERSION"; return; fi
    INSTALL_TIMES="install ${INSTALL_S} s"
    pkgs1=$(in_root dpkg-query -W -f '${db:Status-Abbrev}\n' | grep -c '^ii')
    du1=$(root_mb)
    FOOTPRINT+="; --no-install-recommends added $((pkgs1 - pkgs0)) packages, the root grew ${du0} -> ${du1} MB"
    FOOTPRINT+=" ($(du -sm "$ROOT/usr/lib/edge-agent" | cut -f1) MB of it /usr/lib/edge-agent)"
    check "no ImageMagick or Ghostscript installed" sh -c "! chroot '$ROOT' dpkg-query -W -f '\${db:Status-Abbrev} \${Package}\n' \
        | grep -E '^ii +(ghostscript|imagemagick|libmagickcore)'"
    check "package state ii" status_is_ii
    check "dpkg and edge-agent --version both say $OLD_VERSION" version_is "$OLD_VERSION"
    check "dpkg --verify: md5sums of every file" in_root dpkg --verify cid-edge-agent
    check "Installed-Size is what the files take" installed_size_matches
    check "service user edge-agent (groups: $(in_root id -nG edge-agent 2>/dev/null))" in_root id edge-agent
    check "/var/lib/edge-agent and its spool owned by edge-agent, mode 0750" \
        test "$(in_root stat -c '%U:%G %a' /var/lib/edge-agent /var/lib/edge-agent/spool | sort -u)" = \
        "edge-agent:edge-agent 750"
    check "units in /usr/lib/systemd/system run /usr/bin/edge-agent" \
        grep -q '^ExecStart=/usr/bin/edge-agent ' "$ROOT/usr/lib/systemd/system/edge-agent.service" \
        "$ROOT/usr/lib/systemd/system/edge-agent@.service"
    check "systemd-analyze verify accepts the units" in_root systemd-analyze verify \
        /usr/lib/systemd/system/edge-agent.service
    check "the owner's config.yaml was created and is no conffile; config.d/ exists" first_config_created
    check "the first config validates" in_root edge-agent config validate /etc/edge-agent/config.yaml
    check "python3-scipy (built on the OS's python3-numpy) installed beside it" offline apt-get install -y -q \
        --no-install-recommends python3-scipy
    check "the venv imports the OS's numpy, python3-scipy built on it, OpenCV and PyAV" uses_the_os_numpy
    # what an administrator does after installing: enable the unit, add a drop-in (purge must take both)
    in_root systemctl enable edge-agent.service >/dev/null 2>&1
    mkdir -p "$ROOT/etc/systemd/system/edge-agent.service.d"
    printf '[Service]\nLoadCredential=upload-token:/etc/edge-agent/upload-token\n' \
        >"$ROOT/etc/systemd/system/edge-agent.service.d/override.conf"
    check "systemctl enable edge-agent (offline, in the root)" \
        test -L "$ROOT/etc/systemd/system/multi-user.target.wants/edge-agent.service"

    # --- the owner's edits: a sample file as the camera, a dead server, a fleet fragment ---
    mkdir -p "$ROOT/srv/edge-agent-test"
    cp "$REPO/sample_media/conveyor_720p30.mp4" "$ROOT/srv/edge-agent-test/"
    printf '%s' "$TEST_CONFIG" >"$ROOT/etc/edge-agent/config.yaml"
    printf '%s' "$FRAGMENT" >"$ROOT/etc/edge-agent/config.d/50-hall.yaml"
    check "edge-agent check as the user: spool PASS" spool_check edge-agent
    check "edge-agent check as root: spool PASS" spool_check root

    # --- replay finds the sample's CIDs ---
    local t=$SECONDS
    rm -rf "$ROOT/tmp/replay"
    as_user edge-agent replay --config /etc/edge-agent/config.yaml --no-upload --output-dir /tmp/replay \
        --report /tmp/replay/report.json -q /srv/edge-agent-test/conveyor_720p30.mp4 \
        >"$CACHE/replay-$SUITE-$ARCH.log" 2>&1 || true
    check "replay conveyor_720p30.mp4 finds the manifest's CIDs ($((SECONDS - t)) s)" \
        python3 "$REPO/benchmarks/arm64_smoke_helper.py" check-replay "$ROOT/tmp/replay/report.json" \
        "$REPO/sample_media/manifest.json" conveyor_720p30.mp4 --log "$CACHE/replay-$SUITE-$ARCH.log"
    # clips for the dead server stay queued (exit 75)
    as_user edge-agent replay --config /etc/edge-agent/config.yaml --drain-timeout 1 -q \
        /srv/edge-agent-test/conveyor_720p30.mp4 >"$CACHE/queue-$SUITE-$ARCH.log" 2>&1 || true
    queued=$(queued_clips || echo 0)
    check "clips queued for the dead server: $queued" test "$queued" -ge 1

    # --- upgrade, no terminal, no network, a running process of the old version ---
    start_old_process
    if install_deb "$NEW_VERSION"; then pass "upgrade to $NEW_VERSION: apt-get install -y, no terminal, offline, in $INSTALL_S s"
    else fail "upgrade to $NEW_VERSION"; fi
    INSTALL_TIMES+=", upgrade ${INSTALL_S} s"
    state_after upgrade "$NEW_VERSION" "$queued"
    check "a process of $OLD_VERSION kept running through the upgrade imports its own code afterwards" \
        old_process_still_works

    # --- rollback: the older package; the kept copy of the old one is gone once unused ---
    if install_deb "$OLD_VERSION" --allow-downgrades; then pass "rollback to $OLD_VERSION offline in $INSTALL_S s"
    else fail "rollback to $OLD_VERSION"; fi
    INSTALL_TIMES+=", rollback ${INSTALL_S} s"
    state_after rollback "$OLD_VERSION" "$queued"
    check "after the rollback: only the $OLD_VERSION venv is left" only_version "$OLD_VERSION"

    # --- remove keeps config and spool; purge leaves nothing but the user ---
    check "apt-get remove" offline apt-get remove -y -q cid-edge-agent
    check "after remove: config and spool kept, program gone" sh -c "test -f '$ROOT/etc/edge-agent/config.yaml' \
        && test -d '$ROOT/var/lib/edge-agent/spool' && test ! -e '$ROOT/usr/lib/edge-agent' \
        && test ! -e '$ROOT/usr/bin/edge-agent'"
    check "apt-get purge" offline apt-get purge -y -q cid-edge-agent
    rm -rf "$ROOT/srv/edge-agent-test" "$ROOT/tmp/replay"  # this test's own files
    check "after purge: nothing of edge-agent left but its system user" no_trace
    say "package: $(du -h "$DEBS/$(deb_name "$OLD_VERSION")" | cut -f1); $INSTALL_TIMES"
    say "footprint: $FOOTPRINT"
}

main() {
    need_tools
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock-$SUITE-$ARCH"
    flock -n 9 || die "another run holds $CACHE/.lock-$SUITE-$ARCH"
    trap umount_root EXIT
    build_base
    build_debs "$OLD_VERSION" "$NEW_VERSION"
    fresh_root
    say "root ready at $ROOT [$((SECONDS - T0)) s]"
    main_steps
    [ -n "${KEEP_ROOT:-}" ] || { umount_root; rm -rf "$ROOT"; }
    if [ "$FAILED" -ne 0 ]; then die "some steps failed (logs in $CACHE)"; fi
    pass "all steps ($SUITE $ARCH) in $((SECONDS - T0)) s"
}

main
