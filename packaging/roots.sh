# Clean Debian roots for the package's tests (sourced by test-in-root.sh and test-systemd.sh).
#
# A root is debootstrap --variant=minbase with systemd, systemd-sysv and dbus (what every device has and
# what `systemd-nspawn -b` boots), its apt lists, and the .debs the tests install from it (the package's
# Depends and python3-scipy) downloaded into its apt cache, so every later install runs without network.
# It is kept as a tarball under $EDGE_AGENT_ROOT_CACHE (default /var/tmp/edge-agent-roots, outside the
# repository): the first run of a suite and architecture takes 1-3 minutes, later ones unpack in seconds.
# arm64 runs under qemu-aarch64-static through binfmt_misc (qemu-user-static, binfmt-support).
#
# Ubuntu roots (jammy: Python 3.10, the base of JetPack 6; noble: Python 3.12) come from Ubuntu's archive
# (ports.ubuntu.com for arm64) with main and universe, checked against Ubuntu's archive keyring, fetched
# once over HTTPS from that archive into the cache (Debian does not ship it).
#
# Set before sourcing: SUITE (bookworm | trixie | jammy | noble), ARCH (amd64 | arm64). Sets CACHE, and DEBS,
# OLD_VERSION and NEW_VERSION unless the environment gives them; set ROOT (where the root is unpacked, e.g.
# under $CACHE) after sourcing: only the functions read it.

CACHE=${EDGE_AGENT_ROOT_CACHE:-/var/tmp/edge-agent-roots}
# the two builds of this checkout the tests install (build_debs), and where they are built
DEBS=${DEBS:-$CACHE/debs}
OLD_VERSION=${OLD_VERSION:-0.2.0.post1+g0000001}
NEW_VERSION=${NEW_VERSION:-0.2.0.post2+g0000002}
case "$SUITE" in
    jammy | noble)
        UBUNTU=1
        if [ "$ARCH" = amd64 ]; then DEFAULT_MIRROR=http://archive.ubuntu.com/ubuntu
        else DEFAULT_MIRROR=http://ports.ubuntu.com/ubuntu-ports; fi ;;
    *) UBUNTU=; DEFAULT_MIRROR=http://deb.debian.org/debian ;;
esac
MIRROR=${EDGE_AGENT_MIRROR:-$DEFAULT_MIRROR}
BASE="$CACHE/$SUITE-$ARCH-base.tar"
# downloaded into the base root's apt cache; the zbar library changed its name with 64-bit time_t
# (Debian trixie, Ubuntu noble)
ROOT_DEBS=(python3 python3-numpy procps python3-scipy)
case "$SUITE" in bookworm | jammy) ROOT_DEBS+=(libzbar0) ;; *) ROOT_DEBS+=(libzbar0t64) ;; esac
# Ubuntu's archive keyring, as Ubuntu ships it (the package of noble's release)
UBUNTU_KEYRING_DEB=ubuntu-keyring_2023.11.28.1_all.deb
UBUNTU_KEYRING_URL=https://archive.ubuntu.com/ubuntu/pool/main/u/ubuntu-keyring/$UBUNTU_KEYRING_DEB
UBUNTU_KEYRING="$CACHE/ubuntu-keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg"
T0=${T0:-$SECONDS}
FAILED=0

say() { echo "${TEST_NAME:-root}[$SUITE/$ARCH]: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
pass() { say "PASS [$((SECONDS - T0)) s] $*"; }
fail() { say "FAIL [$((SECONDS - T0)) s] $*"; FAILED=1; }
check() { # check DESCRIPTION COMMAND...: PASS or FAIL with the command's output
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$what"; else fail "$what"; echo "$out" | sed 's/^/    /' >&2; fi
}
# in the root, with a clean environment and no terminal (as Ansible or unattended-upgrades run apt)
in_root() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        setsid -w chroot "$ROOT" "$@" </dev/null
}
# the same without any network interface
offline() { unshare -n env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    setsid -w chroot "$ROOT" "$@" </dev/null; }
as_user() { in_root runuser -u edge-agent -- "$@"; }

need_tools() {
    [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
    local missing=()
    [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    command -v dpkg-deb >/dev/null || missing+=(dpkg)
    command -v unshare >/dev/null || missing+=(util-linux)
    if [ "$ARCH" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ]; then
        [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
        command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    fi
    local pair
    for pair in "$@"; do  # TOOL:PACKAGE
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
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
    [ -s "$BASE" ] && return
    local t=$SECONDS build="$CACHE/build-$SUITE-$ARCH"
    say "building the $SUITE $ARCH base root (first run only; cached as $BASE)"
    umount_root
    rm -rf "$build"
    mkdir -p "$build"
    local extra=()
    if [ -n "$UBUNTU" ]; then
        ubuntu_keyring
        # this debootstrap may predate the suite: every Ubuntu release since 7.10 bootstraps as gutsy did
        extra=(--keyring="$UBUNTU_KEYRING" --components=main,universe)
    fi
    debootstrap --arch="$ARCH" --variant=minbase --include=systemd,systemd-sysv,dbus "${extra[@]}" \
        "$SUITE" "$build" "$MIRROR" ${UBUNTU:+/usr/share/debootstrap/scripts/gutsy} \
        >"$CACHE/debootstrap-$SUITE-$ARCH.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap-$SUITE-$ARCH.log" >&2; die "debootstrap failed"; }
    local keep=$ROOT
    ROOT=$build
    [ -z "$UBUNTU" ] || echo "deb $MIRROR $SUITE main universe" >"$ROOT/etc/apt/sources.list"
    mount_root
    in_root apt-get update -qq
    in_root apt-get install -y -qq --download-only --no-install-recommends "${ROOT_DEBS[@]}" >/dev/null \
        || die "could not download ${ROOT_DEBS[*]} into the root's apt cache"
    umount_root
    ROOT=$keep
    tar -C "$build" -cf "$BASE.part" . && mv "$BASE.part" "$BASE" && rm -rf "$build"
    say "base root built in $((SECONDS - t)) s: $(du -h "$BASE" | cut -f1)"
}

# Ubuntu's archive keyring, unpacked from Ubuntu's package into the cache (first Ubuntu root only)
ubuntu_keyring() {
    [ -s "$UBUNTU_KEYRING" ] && return
    command -v curl >/dev/null || die "curl is needed to fetch $UBUNTU_KEYRING_DEB (apt-get install curl)"
    curl -fsS -o "$CACHE/$UBUNTU_KEYRING_DEB" "$UBUNTU_KEYRING_URL" || die "cannot fetch $UBUNTU_KEYRING_URL"
    dpkg-deb -x "$CACHE/$UBUNTU_KEYRING_DEB" "$CACHE/ubuntu-keyring" || die "$UBUNTU_KEYRING_DEB is not a package"
    [ -s "$UBUNTU_KEYRING" ] || die "$UBUNTU_KEYRING_DEB holds no ubuntu-archive-keyring.gpg"
}

fresh_root() {
    umount_root
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    tar -C "$ROOT" -xf "$BASE"
    mount_root
}

deb_name() { echo "cid-edge-agent_${1}_$ARCH.deb"; }

# OLD and NEW packages of this checkout (EDGE_AGENT_VERSION), built once into $DEBS and reused
build_debs() {
    local v
    mkdir -p "$DEBS"
    exec 8>"$CACHE/.lock-build"
    flock 8  # one build at a time in this checkout (setuptools writes into it)
    for v in "$@"; do
        if [ ! -s "$DEBS/$(deb_name "$v")" ] || [ -n "${REBUILD:-}" ]; then
            EDGE_AGENT_VERSION=$v "$REPO/dev.sh" deb "$ARCH" --out "$DEBS" >&2 || die "./dev.sh deb $ARCH failed"
        fi
    done
    exec 8>&-
}

# install_deb VERSION [apt options]: offline, with apt and nothing else, no terminal, no --force-conf*
install_deb() {
    local v=$1 t=$SECONDS
    shift
    cp "$DEBS/$(deb_name "$v")" "$ROOT/tmp/"
    offline apt-get install -y -q --no-install-recommends "$@" "/tmp/$(deb_name "$v")" \
        >"$CACHE/apt-$SUITE-$ARCH-$v.log" 2>&1 || { tail -30 "$CACHE/apt-$SUITE-$ARCH-$v.log" >&2; return 1; }
    INSTALL_S=$((SECONDS - t))
}

status_is_ii() { [ "$(in_root dpkg-query -W -f '${db:Status-Abbrev}' cid-edge-agent)" = "ii " ]; }
installed_version() { in_root dpkg-query -W -f '${Version}' cid-edge-agent; }
# dpkg and the agent show one string: no translation between Debian and PEP 440 spellings
version_is() {
    local agent
    agent=$(in_root edge-agent --version)
    [ "$(installed_version)" = "$1" ] && [ "$agent" = "edge-agent $1" ] \
        || { echo "dpkg: $(installed_version), agent: $agent, expected $1"; return 1; }
}
