#!/usr/bin/env bash
# Proves the Debian package in a clean Debian bookworm root, as a factory IT person would use it:
# apt and nothing else, no network during the install.
#
#   sudo packaging/test-in-root.sh amd64|arm64      (./dev.sh deb-test amd64|arm64 is the same)
#
# 1. A bookworm root (debootstrap --variant=minbase, plus systemd as on every device), with the
#    package's Depends downloaded into apt's cache but not installed; kept as a tarball under
#    $EDGE_AGENT_ROOT_CACHE (default /var/tmp/edge-agent-deb-test) so a rerun starts in seconds.
#    arm64 runs under qemu-aarch64-static through binfmt_misc (qemu-user-static + binfmt-support).
# 2. Two builds of the package (./dev.sh deb ARCH with SETUPTOOLS_SCM_PRETEND_VERSION=OLD, then NEW).
# 3. In a fresh copy of the root, with `unshare -n` (no network) around every apt-get install:
#    install OLD -> service user, /var/lib/edge-agent owned by it, /usr/bin/edge-agent, units, config;
#    `edge-agent check` as root and as the user; `replay` of conveyor_720p30.mp4 finds the manifest's
#    CIDs; a clip queued for a dead URL; upgrade to NEW keeps config and the queued clip; rollback to
#    OLD keeps them; `apt-get remove` keeps config and spool; `apt-get purge` leaves nothing.
# Exit 0 when every step passed; each step prints PASS/FAIL and the time it took.
#
# Environment: EDGE_AGENT_ROOT_CACHE (cache folder), EDGE_AGENT_MIRROR (Debian mirror for debootstrap),
# OLD_VERSION / NEW_VERSION (default 0.0.1 / 0.0.2), KEEP_ROOT=1 (leave the test root for inspection).
set -euo pipefail

ARCH=${1:-}
case "$ARCH" in
    amd64 | arm64) ;;
    *) echo "usage: $0 amd64|arm64" >&2; exit 64 ;;
esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EDGE_AGENT_ROOT_CACHE:-/var/tmp/edge-agent-deb-test}
MIRROR=${EDGE_AGENT_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE="$CACHE/$SUITE-$ARCH-base.tar"
ROOT="$CACHE/root-$ARCH"
OLD_VERSION=${OLD_VERSION:-0.0.1}
NEW_VERSION=${NEW_VERSION:-0.0.2}
# what the root gets besides minbase: systemd (a device has it), and what the package's Depends pull
# in, downloaded only, so the install below resolves them from apt's cache without network
ROOT_PACKAGES=(systemd)
DEPENDS_PACKAGES=(python3 python3-venv libzbar0 procps)
T0=$SECONDS
FAILED=0

say() { echo "deb-test[$ARCH]: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
pass() { say "PASS [$((SECONDS - T0)) s] $*"; }
fail() { say "FAIL [$((SECONDS - T0)) s] $*"; FAILED=1; }
check() { # check DESCRIPTION COMMAND...: PASS or FAIL with the command's output
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$what"; else fail "$what"; echo "$out" | sed 's/^/    /' >&2; fi
}
# in the root, with a clean environment; `offline` runs it without any network interface
in_root() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive chroot "$ROOT" "$@"
}
offline() { unshare -n env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive chroot "$ROOT" "$@"; }
as_user() { in_root runuser -u edge-agent -- "$@"; }

need_tools() {
    [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mounts need it): sudo $0 $ARCH"
    local missing=()
    [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
    command -v dpkg-deb >/dev/null || missing+=(dpkg)
    if [ "$ARCH" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ]; then
        [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
        command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    fi
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ "$ARCH" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ]; then
        # binfmt_misc runs aarch64 programs (dpkg, the maintainer scripts, python) inside the root
        [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
            || die "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --display qemu-aarch64)"
    fi
}

mount_root() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}
umount_root() {
    local m
    for m in "$ROOT/dev" "$ROOT/proc"; do mountpoint -q "$m" && umount -l "$m"; done
    return 0
}

build_base() {
    if [ -s "$BASE" ]; then
        return
    fi
    local t=$SECONDS
    say "building the $SUITE $ARCH base root (first run only; cached as $BASE)"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --arch="$ARCH" --variant=minbase --include="$(IFS=,; echo "${ROOT_PACKAGES[*]}")" \
        "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap-$ARCH.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap-$ARCH.log" >&2; die "debootstrap failed ($CACHE/debootstrap-$ARCH.log)"; }
    mount_root
    in_root apt-get update -qq
    umount_root
    tar -C "$ROOT" -cf "$BASE.part" .
    mv "$BASE.part" "$BASE"
    say "base root built in $((SECONDS - t)) s: $(du -h "$BASE" | cut -f1)"
}

fresh_root() {
    umount_root
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    tar -C "$ROOT" -xf "$BASE"
    mount_root
    # the Depends into apt's cache, not installed (with network; quick once cached in the base's lists)
    in_root apt-get install -y -qq --download-only --no-install-recommends "${DEPENDS_PACKAGES[@]}" >/dev/null \
        || die "could not download ${DEPENDS_PACKAGES[*]} into the root's apt cache"
}

build_debs() {
    local v
    # one build at a time in this checkout (setuptools writes into it), whichever architecture
    exec 8>"$CACHE/.lock-build"
    flock 8
    for v in "$OLD_VERSION" "$NEW_VERSION"; do
        if [ ! -s "$REPO/dist/$(deb_name "$v")" ] || [ -n "${REBUILD:-}" ]; then
            SETUPTOOLS_SCM_PRETEND_VERSION=$v "$REPO/dev.sh" deb "$ARCH" >&2
        fi
        [ -s "$REPO/dist/$(deb_name "$v")" ] || die "./dev.sh deb $ARCH did not write dist/$(deb_name "$v")"
    done
    exec 8>&-
}
deb_name() { echo "cid-edge-agent_${1}_$ARCH.deb"; }

install_deb() { # install_deb VERSION [apt options]: offline, with apt and nothing else
    local v=$1 t=$SECONDS
    shift
    cp "$REPO/dist/$(deb_name "$v")" "$ROOT/tmp/"
    offline apt-get install -y -q --no-install-recommends "$@" "/tmp/$(deb_name "$v")" \
        >"$CACHE/apt-$ARCH-$v.log" 2>&1 || { tail -30 "$CACHE/apt-$ARCH-$v.log" >&2; return 1; }
    INSTALL_S=$((SECONDS - t))
}

installed_version() { in_root dpkg-query -W -f '${Version}' cid-edge-agent; }
queued_clips() { as_user edge-agent spool status --config /etc/edge-agent/config.yaml --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["clips"])'; }

main() {
    need_tools
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock-$ARCH"
    flock -n 9 || die "another run holds $CACHE/.lock-$ARCH"
    trap umount_root EXIT
    build_base
    [ "${1:-}" = --base-only ] && exit 0
    build_debs
    fresh_root
    say "root ready at $ROOT [$((SECONDS - T0)) s]"
    main_steps
    [ -n "${KEEP_ROOT:-}" ] || { umount_root; rm -rf "$ROOT"; }
    if [ "$FAILED" -ne 0 ]; then die "some steps failed (logs in $CACHE)"; fi
    pass "all steps ($ARCH) in $((SECONDS - T0)) s"
}

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

spool_check() { # spool_check WHO: `edge-agent check` as root or as the user; PASS when its spool line passes
    local who=$1 out="$CACHE/check-$ARCH-$1.json"
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

owners_in_spool() { # every file under /var/lib/edge-agent owned by edge-agent (what root's commands left)
    local wrong
    wrong=$(in_root find /var/lib/edge-agent ! -user edge-agent -printf '%u %p\n')
    [ -z "$wrong" ] || { echo "not owned by edge-agent:"; echo "$wrong"; return 1; }
}

same_config() { in_root cat /etc/edge-agent/config.yaml | cmp -s - <(printf '%s' "$TEST_CONFIG"); }
queued_is() { [ "$(queued_clips)" = "$1" ] || { echo "queued: $(queued_clips), expected $1"; return 1; }; }
only_venv() { # only_venv VERSION: /usr/lib/edge-agent holds wheels, current -> VERSION and that venv
    local have
    have=$(in_root ls -A /usr/lib/edge-agent | tr '\n' ' ')
    [ "$have" = "$1 current wheels " ] || { echo "/usr/lib/edge-agent: $have"; return 1; }
    [ "$(in_root readlink /usr/lib/edge-agent/current)" = "$1" ]
}
version_is() { in_root edge-agent --version | grep -qx "edge-agent $1" || { in_root edge-agent --version; return 1; }; }
no_trace() { # purge leaves nothing of the package: files, user, group, venvs
    local left
    left=$(in_root find / -xdev \( -path /proc -o -path /dev -o -path /tmp -o -path /var/cache/apt \) -prune \
        -o \( -name '*edge-agent*' -o -name '*edge_agent*' \) -print | grep -v '^/var/lib/dpkg/' || true)
    [ -z "$left" ] || { echo "left behind:"; echo "$left"; return 1; }
    if in_root getent passwd edge-agent || in_root getent group edge-agent; then echo "user or group left"; return 1; fi
}

main_steps() {
    local queued
    # --- install, offline ---
    if install_deb "$OLD_VERSION"; then pass "apt-get install ./$(deb_name "$OLD_VERSION") offline in $INSTALL_S s"
    else fail "install $OLD_VERSION"; return; fi
    INSTALL_TIMES="first install ${INSTALL_S} s"
    check "Depends came with it: python3-venv, libzbar0" in_root dpkg-query -W python3-venv libzbar0
    check "service user edge-agent (groups: $(in_root id -nG edge-agent 2>/dev/null))" in_root id edge-agent
    check "/var/lib/edge-agent and its spool owned by edge-agent, mode 0750" \
        test "$(in_root stat -c '%U:%G %a' /var/lib/edge-agent /var/lib/edge-agent/spool | sort -u)" = \
        "edge-agent:edge-agent 750"
    check "/usr/bin/edge-agent runs version $OLD_VERSION" version_is "$OLD_VERSION"
    check "units in /lib/systemd/system run /usr/bin/edge-agent" \
        grep -q '^ExecStart=/usr/bin/edge-agent ' "$ROOT/lib/systemd/system/edge-agent.service" \
        "$ROOT/lib/systemd/system/edge-agent@.service"
    check "systemd-analyze verify accepts the units" in_root systemd-analyze verify \
        /lib/systemd/system/edge-agent.service
    check "/etc/edge-agent/config.yaml is a conffile; config.d/ exists" \
        sh -c "chroot '$ROOT' dpkg-query -W -f '\${Conffiles}' cid-edge-agent | grep -q /etc/edge-agent/config.yaml \
               && test -d '$ROOT/etc/edge-agent/config.d'"
    check "the shipped config validates" in_root edge-agent config validate /etc/edge-agent/config.yaml
    # what python3-picamera2 is on Raspberry Pi OS: a system package the agent's venv must import, while
    # its own requirements stay those of the shipped wheels
    mkdir -p "$ROOT/usr/lib/python3/dist-packages"
    printf 'SEEN = True\n' >"$ROOT/usr/lib/python3/dist-packages/system_site_probe.py"
    check "the venv sees system packages (python3-picamera2) and keeps its own numpy" in_root \
        /usr/lib/edge-agent/current/bin/python -c \
        "import system_site_probe, numpy; assert numpy.__file__.startswith('/usr/lib/edge-agent/'), numpy.__file__"
    rm -f "$ROOT/usr/lib/python3/dist-packages/system_site_probe.py"
    # what an administrator does after installing: enable the unit, add a drop-in (purge must take both)
    in_root systemctl enable edge-agent.service >/dev/null 2>&1
    mkdir -p "$ROOT/etc/systemd/system/edge-agent.service.d"
    printf '[Service]\nLoadCredential=upload-token:/etc/edge-agent/upload-token\n' \
        >"$ROOT/etc/systemd/system/edge-agent.service.d/override.conf"
    check "systemctl enable edge-agent (offline, in the root)" \
        test -L "$ROOT/etc/systemd/system/multi-user.target.wants/edge-agent.service"

    # --- the device's configuration: a sample file as the camera, a dead server ---
    mkdir -p "$ROOT/srv/edge-agent-test"
    cp "$REPO/sample_media/conveyor_720p30.mp4" "$ROOT/srv/edge-agent-test/"
    printf '%s' "$TEST_CONFIG" >"$ROOT/etc/edge-agent/config.yaml"
    check "edge-agent check as the user: spool PASS" spool_check edge-agent
    check "edge-agent check as root: spool PASS" spool_check root
    check "edge-agent check as the user after root's: spool PASS" spool_check edge-agent
    check "every file under /var/lib/edge-agent still owned by edge-agent" owners_in_spool

    # --- replay finds the sample's CIDs ---
    local t=$SECONDS
    rm -rf "$ROOT/tmp/replay"
    in_root runuser -u edge-agent -- edge-agent replay --config /etc/edge-agent/config.yaml --no-upload \
        --output-dir /tmp/replay --report /tmp/replay/report.json -q /srv/edge-agent-test/conveyor_720p30.mp4 \
        >"$CACHE/replay-$ARCH.log" 2>&1 || true
    check "replay conveyor_720p30.mp4 finds the manifest's CIDs ($((SECONDS - t)) s)" \
        python3 "$REPO/benchmarks/arm64_smoke_helper.py" check-replay "$ROOT/tmp/replay/report.json" \
        "$REPO/sample_media/manifest.json" conveyor_720p30.mp4 --log "$CACHE/replay-$ARCH.log"
    # clips for the dead server stay queued (exit 75)
    as_user edge-agent replay --config /etc/edge-agent/config.yaml --drain-timeout 1 -q \
        /srv/edge-agent-test/conveyor_720p30.mp4 >"$CACHE/queue-$ARCH.log" 2>&1 || true
    queued=$(queued_clips || echo 0)
    check "clips queued for the dead server: $queued" test "$queued" -ge 1

    # --- upgrade: config and queue kept, the new version runs, the old venv is gone ---
    if install_deb "$NEW_VERSION"; then pass "upgrade to $NEW_VERSION offline in $INSTALL_S s"
    else fail "upgrade to $NEW_VERSION"; fi
    INSTALL_TIMES+=", upgrade ${INSTALL_S} s"
    check "after the upgrade: version $NEW_VERSION" version_is "$NEW_VERSION"
    check "after the upgrade: config kept" same_config
    check "after the upgrade: $queued clip(s) still queued" queued_is "$queued"
    check "after the upgrade: only the $NEW_VERSION venv is left" only_venv "$NEW_VERSION"

    # --- rollback: the older package ---
    if install_deb "$OLD_VERSION" --allow-downgrades; then pass "rollback to $OLD_VERSION offline in $INSTALL_S s"
    else fail "rollback to $OLD_VERSION"; fi
    INSTALL_TIMES+=", rollback ${INSTALL_S} s"
    check "after the rollback: version $OLD_VERSION" version_is "$OLD_VERSION"
    check "after the rollback: config kept" same_config
    check "after the rollback: $queued clip(s) still queued" queued_is "$queued"
    check "after the rollback: only the $OLD_VERSION venv is left" only_venv "$OLD_VERSION"
    check "after the rollback: every file under /var/lib/edge-agent owned by edge-agent" owners_in_spool

    # --- remove keeps config and spool; purge leaves nothing ---
    check "apt-get remove" offline apt-get remove -y -q cid-edge-agent
    check "after remove: config and spool kept, program gone" sh -c "test -f '$ROOT/etc/edge-agent/config.yaml' \
        && test -d '$ROOT/var/lib/edge-agent/spool' && test ! -e '$ROOT/usr/lib/edge-agent' \
        && test ! -e '$ROOT/usr/bin/edge-agent'"
    check "apt-get purge" offline apt-get purge -y -q cid-edge-agent
    rm -rf "$ROOT/srv/edge-agent-test" "$ROOT/tmp/replay"  # this test's own files
    check "after purge: nothing of edge-agent left (files, user, group)" no_trace
    say "package: $(du -h "$REPO/dist/$(deb_name "$OLD_VERSION")" | cut -f1) ($ARCH); $INSTALL_TIMES"
}

main "${@:2}"
