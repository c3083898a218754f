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
DEPENDS_PACKAGES=(python3 python3-venv libzbar0)
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
    in_root apt-get install -y -qq --download-only --no-install-recommends "${DEPENDS_PACKAGES[@]}" >/dev/null
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
}

build_debs() {
    local v
    for v in "$OLD_VERSION" "$NEW_VERSION"; do
        if [ ! -s "$REPO/dist/$(deb_name "$v")" ] || [ -n "${REBUILD:-}" ]; then
            SETUPTOOLS_SCM_PRETEND_VERSION=$v "$REPO/dev.sh" deb "$ARCH" >&2
        fi
        [ -s "$REPO/dist/$(deb_name "$v")" ] || die "./dev.sh deb $ARCH did not write dist/$(deb_name "$v")"
    done
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
queued_clips() { in_root edge-agent spool status --config /etc/edge-agent/config.yaml --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["queued"])'; }

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

main_steps() { :; }

main "${@:2}"
