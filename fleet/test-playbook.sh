#!/usr/bin/env bash
# Runs push-config.yml for real, with ansible-core over SSH, against a Debian bookworm root on this
# machine: a minbase debootstrap (cached as a tarball in $FLEET_WORK, so a rerun takes seconds to
# unpack), the agent installed in it, running as its service user on a looping sample video, sshd on
# 127.0.0.1 with a generated key. Three pushes:
#   1. a good fragment: validated, put in place, reloaded, the applied counter goes up;
#   2. a fragment with a typo: refused by `edge-agent config validate`, never put in place;
#   3. a fragment the agent cannot read (mode 0600): validates as root, the agent refuses the reload,
#      the playbook rolls it back and the agent applies the previous config again.
# Needs root (chroot, mounts) and the network to Debian's and Python's package registries on the
# first run. Prints the time each part took.
#
#   sudo fleet/test-playbook.sh
#   FLEET_DEB=dist/cid-edge-agent_<version>_amd64.deb sudo fleet/test-playbook.sh   # the package instead
# Deterministic: the agent decides a save and the playbook's SIGHUP in one queue (service/reload.py), so
# the rollback's reload is never followed by a late refusal of the fragment it replaced.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
WORK=${FLEET_WORK:-/var/tmp/edge-agent-fleet}
ROOT=$WORK/root
TARBALL=$WORK/bookworm-minbase.tar.gz
ANSIBLE_VENV=$WORK/ansible-venv
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
STARTED=$(date +%s.%N)

say() { printf '== %s (%.1f s)\n' "$*" "$(echo "$(date +%s.%N) - $STARTED" | bc)"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (chroot and mounts)"
for tool in debootstrap bc curl ssh ssh-keygen; do command -v $tool >/dev/null || fail "$tool missing (apt install $tool)"; done
mkdir -p "$WORK"

AGENT_PID="" SSHD_PID=""
cleanup() {
  [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && for _ in $(seq 30); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 1; done
  for m in "$ROOT/dev/pts" "$ROOT/proc"; do mountpoint -q "$m" && umount "$m"; done
  true
}
trap cleanup EXIT

# --- the Debian root ------------------------------------------------------------------------------
if [ ! -f "$TARBALL" ]; then
  build=$WORK/build.$$
  debootstrap --variant=minbase \
    --include=python3,python3-venv,openssh-server,libzbar0,procps,ca-certificates \
    bookworm "$build" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || fail "debootstrap: see $WORK/debootstrap.log"
  tar -C "$build" -czf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL" && rm -rf "$build"
  say "debootstrap bookworm minbase -> $TARBALL"
fi
for m in "$ROOT/dev/pts" "$ROOT/proc"; do mountpoint -q "$m" && umount "$m"; done
REUSE=""  # FLEET_REUSE=1: keep the last run's root and agent (for working on the playbook itself)
[ "${FLEET_REUSE:-}" = 1 ] && chroot "$ROOT" test -x /usr/bin/edge-agent 2>/dev/null && REUSE=1
if [ -z "$REUSE" ]; then
  rm -rf "$ROOT" && mkdir -p "$ROOT" && tar -C "$ROOT" -xzf "$TARBALL"
fi
mount -t proc proc "$ROOT/proc"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$ROOT/dev/pts"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
say "root ready at $ROOT${REUSE:+ (kept from the last run)}"

# --- the agent in it ------------------------------------------------------------------------------
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
METRICS_PORT=$(free_port)
SSH_PORT=$(free_port)
if [ -n "$REUSE" ]; then
  rm -rf "$ROOT/etc/edge-agent/config.d" "$ROOT/var/lib/edge-agent/spool"
  install -d -m 0755 "$ROOT/etc/edge-agent/config.d"
  say "reusing the root and the agent installed in it"
elif [ -n "${FLEET_DEB:-}" ]; then
  # The Debian package: /usr/bin/edge-agent, the user and /var/lib/edge-agent come with it.
  cp "$FLEET_DEB" "$ROOT/tmp/" && chroot "$ROOT" apt-get install -y --no-install-recommends \
    "/tmp/$(basename "$FLEET_DEB")" >"$WORK/install.log" 2>&1 \
    || fail "apt-get install: see $WORK/install.log"
  say "agent installed ($(chroot "$ROOT" edge-agent --version 2>&1 | head -1))"
else
  # From the repository: its wheel and its dependencies' wheels (cached in $WORK/wheels), offline in the root.
  rm -rf "$WORK/project" && "$PY" -m pip wheel --quiet --no-deps -w "$WORK/project" "$REPO" >"$WORK/install.log" 2>&1
  "$PY" -m pip wheel --quiet --no-index --find-links "$WORK/wheels" -w "$WORK/wheels" "$WORK"/project/*.whl \
    >>"$WORK/install.log" 2>&1 \
    || "$PY" -m pip wheel --quiet -w "$WORK/wheels" "$WORK"/project/*.whl >>"$WORK/install.log" 2>&1
  mkdir -p "$ROOT/tmp/wheels" && cp "$WORK"/wheels/*.whl "$ROOT/tmp/wheels/"
  cp -f "$WORK"/project/*.whl "$ROOT/tmp/wheels/"  # this build's, not an older one of the same version in the cache
  chroot "$ROOT" sh -c "python3 -m venv /opt/edge-agent/venv && /opt/edge-agent/venv/bin/pip install --quiet \
    --no-index --find-links /tmp/wheels /tmp/wheels/$(basename "$WORK"/project/*.whl) \
    && ln -sf /opt/edge-agent/venv/bin/edge-agent /usr/bin/edge-agent" >>"$WORK/install.log" 2>&1 \
    || fail "install: see $WORK/install.log"
  say "agent installed ($(chroot "$ROOT" edge-agent --version 2>&1 | head -1))"
fi
if ! chroot "$ROOT" id edge-agent >/dev/null 2>&1; then  # the package makes it (sysusers.d); pip does not
  chroot "$ROOT" useradd --system --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
fi
install -d -m 0755 "$ROOT/etc/edge-agent" "$ROOT/etc/edge-agent/config.d"
install -d -m 0750 -o "$(chroot "$ROOT" id -u edge-agent)" -g "$(chroot "$ROOT" id -g edge-agent)" "$ROOT/var/lib/edge-agent"

install -m 0644 "$REPO/sample_media/conveyor_720p30.mp4" "$ROOT/var/lib/edge-agent/sample.mp4"
cat >"$ROOT/etc/edge-agent/config.yaml" <<YAML
device_id: fleet-test-01
source:
  kind: file
  path: /var/lib/edge-agent/sample.mp4
  realtime: true
  loop: true
detector:
  rate_hz: 2
spool:
  dir: /var/lib/edge-agent/spool
  min_free_bytes: 0
http:
  port: $METRICS_PORT
YAML
# As the unit runs it: the service user, SIGHUP to reload; its pid where the playbook's reload finds it.
chroot "$ROOT" setpriv --reuid=edge-agent --regid=edge-agent --init-groups \
  /usr/bin/edge-agent run --config /etc/edge-agent/config.yaml >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
echo "$AGENT_PID" >"$ROOT/run/edge-agent.pid"
METRICS=http://127.0.0.1:$METRICS_PORT/metrics
for _ in $(seq 120); do curl -sf "$METRICS" >/dev/null && break; kill -0 $AGENT_PID || fail "agent exited: $(tail -5 "$WORK/agent.log")"; sleep 0.5; done
curl -sf "$METRICS" >/dev/null || fail "no /metrics: $(tail -5 "$WORK/agent.log")"
say "agent running as edge-agent, /metrics on port $METRICS_PORT"

# --- sshd on loopback -----------------------------------------------------------------------------
[ -f "$WORK/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$WORK/id_ed25519"
install -d -m 0700 "$ROOT/root/.ssh" && install -m 0600 "$WORK/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
mkdir -p "$ROOT/run/sshd"
chroot "$ROOT" /usr/sbin/sshd -D -e -p "$SSH_PORT" -o ListenAddress=127.0.0.1 \
  -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no >"$WORK/sshd.log" 2>&1 &
SSHD_PID=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$SSH_PORT") 2>/dev/null && break; sleep 0.2; done
say "sshd on 127.0.0.1:$SSH_PORT"

# --- ansible-core -----------------------------------------------------------------------------------
if [ ! -x "$ANSIBLE_VENV/bin/ansible-playbook" ]; then
  python3 -m venv "$ANSIBLE_VENV" && "$ANSIBLE_VENV/bin/pip" install --quiet ansible-core
  say "ansible-core installed in $ANSIBLE_VENV"
fi
cat >"$WORK/inventory.ini" <<INI
[edge_agents]
fleet-test-01 ansible_host=127.0.0.1 ansible_port=$SSH_PORT edge_agent_metrics_url=$METRICS edge_agent_reload_command='kill -HUP "\$(cat /run/edge-agent.pid)"'

[edge_agents:vars]
ansible_user=root
ansible_ssh_private_key_file=$WORK/id_ed25519
ansible_ssh_common_args=-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
ansible_python_interpreter=/usr/bin/python3
INI
# (host variables: an inventory file's group variables rank below the playbook's group_vars/all.yml)
playbook() { ANSIBLE_CONFIG="$HERE/ansible.cfg" "$ANSIBLE_VENV/bin/ansible-playbook" -i "$WORK/inventory.ini" "$HERE/push-config.yml" "$@"; }
# one scrape of /metrics; a failed one is retried, never read as a value (an empty counter would pass
# for "moved" and end a wait early)
metrics() {
  local i
  for i in $(seq 20); do curl -sf "$METRICS" && return 0; echo "scrape $i of $METRICS failed" >&2; sleep 0.25; done
  return 1
}
counter() { metrics | sed -n "s/^edge_agent_config_reloads_total{result=\"$1\"} //p"; }
in_root() { chroot "$ROOT" "$@"; }
DEST=$ROOT/etc/edge-agent/config.d/10-fleet.yaml

# 1. a good fragment
applied0=$(counter applied)
playbook -e fragment_src="$HERE/files/10-fleet.yaml" >"$WORK/run1.log" 2>&1 || { cat "$WORK/run1.log"; fail "good push failed"; }
cmp -s "$DEST" "$HERE/files/10-fleet.yaml" || fail "the fragment is not in place"
[ "$(counter applied)" != "$applied0" ] || fail "applied counter did not move"
in_root edge-agent config show --config /etc/edge-agent/config.yaml | grep -q "cooldown_s: 4.0  # /etc/edge-agent/config.d/10-fleet.yaml:6" \
  || fail "config show does not name the fragment"
# edge_agent_info is replaced whole on each reload (its old series dropped): a scrape may fall between
info_has_site() { metrics | grep -q 'edge_agent_info{.*device_id="fleet-test-01",site="plant-a"'; }
for _ in $(seq 10); do info_has_site && break; sleep 0.5; done
info_has_site || { curl -s "$METRICS" | grep -E '^edge_agent_(info|config_)' >&2; tail -20 "$WORK/agent.log" >&2
  fail "edge_agent_info lacks the pushed site"; }
say "1. good fragment pushed, validated, reloaded, applied ($(counter applied) applied, $(counter refused) refused)"
playbook -e fragment_src="$HERE/files/10-fleet.yaml" >"$WORK/run1b.log" 2>&1 || fail "second run of the same push failed"
grep -q "changed=0" "$WORK/run1b.log" || fail "an unchanged push changed something"
say "1b. the same push again: nothing changed, no reload"

# 2. a typo: refused before it lands
bad=$WORK/10-fleet.yaml && sed 's/cooldown_s/cooldwn_s/' "$HERE/files/10-fleet.yaml" >"$bad"
refused0=$(counter refused)
if playbook -e fragment_src="$bad" >"$WORK/run2.log" 2>&1; then fail "a fragment with a typo was accepted"; fi
grep -q "detector.cooldwn_s: unknown key (did you mean cooldown_s?)" "$WORK/run2.log" || { cat "$WORK/run2.log"; fail "no located error"; }
grep -q "never put in place" "$WORK/run2.log" || fail "no 'never put in place'"
cmp -s "$DEST" "$HERE/files/10-fleet.yaml" || fail "the bad fragment replaced the good one"
[ "$(counter refused)" = "$refused0" ] || fail "the agent saw the bad fragment"
say "2. typo refused by validate on the device, never put in place"

# 3. validates, but the agent's user cannot read it: the reload is refused and rolled back
sed 's/cooldown_s: 4/cooldown_s: 6/' "$HERE/files/10-fleet.yaml" >"$bad"
applied0=$(counter applied)
if playbook -e fragment_src="$bad" -e fragment_mode=0600 >"$WORK/run3.log" 2>&1; then fail "an unreadable fragment was accepted"; fi
grep -q "(rolled back)" "$WORK/run3.log" || { cat "$WORK/run3.log"; fail "no rollback"; }
cmp -s "$DEST" "$HERE/files/10-fleet.yaml" || fail "the rollback did not restore the previous fragment"
[ "$(stat -c %a "$DEST")" = 640 ] || fail "the rollback did not restore the mode"
[ "$(counter refused)" != "$refused0" ] || fail "refused counter did not move"
# the rollback's reload is applied: the applied counter moved and the last reload succeeded, in one scrape
rolled_back() {
  local m
  m=$(metrics) || return 1
  [ "$(echo "$m" | sed -n 's/^edge_agent_config_reloads_total{result="applied"} //p')" != "$applied0" ] \
    && echo "$m" | grep -q '^edge_agent_config_last_reload_successful 1'
}
for _ in $(seq 60); do rolled_back && break; sleep 0.5; done
rolled_back || { metrics | grep -E '^edge_agent_config_' >&2; tail -20 "$WORK/agent.log" >&2
  fail "the previous config was not applied again"; }
grep -q "reload refused, keeping the running config: /etc/edge-agent/config.d/10-fleet.yaml: cannot read config fragment: Permission denied" \
  "$WORK/agent.log" || fail "the agent's log does not say why"
kill -0 "$AGENT_PID" || fail "the agent died"
say "3. unreadable fragment refused by the agent, rolled back, previous config applied again ($(counter applied) applied, $(counter refused) refused)"
say "all passed"
