#!/usr/bin/env bash
# Two "hosts" on this machine: network namespaces spark-01 and spark-02, each with its own sshd, for
# testing `disagg up FILE` across two real network stacks. Run as root.
#
#   bash deploy/two_hosts.sh up [--rate 1gbit]   # create both, print the addresses; idempotent (recreates)
#   bash deploy/two_hosts.sh limit 1gbit         # rate-limit the KV link (tc tbf, both directions)
#   bash deploy/two_hosts.sh unlimit             # remove the limit
#   bash deploy/two_hosts.sh counters            # bytes sent/received on each end of the KV link
#   bash deploy/two_hosts.sh ssh spark-01 CMD    # run CMD in spark-01 over ssh with the throwaway key
#   bash deploy/two_hosts.sh down                # remove everything it created (also after a crash)
#
# Topology (PREFIX defaults to 10.77; interface names inside a namespace are its own):
#
#   root ns  dg-spark-01 PREFIX.1.1/24 ── veth ── eth0 PREFIX.1.2/24   spark-01   kv0 PREFIX.12.1/24 ─┐
#   root ns  dg-spark-02 PREFIX.2.1/24 ── veth ── eth0 PREFIX.2.2/24   spark-02   kv0 PREFIX.12.2/24 ─┘
#                                                                        direct veth link, MTU 9000
#
# eth0 carries ssh and HTTP (the "management" network, reachable from the root namespace); kv0 is the
# direct link between the two, like the ConnectX-7 cable between two DGX Sparks, and carries only KV.
# Namespaces share the filesystem, so both hosts see the same disagg install and model folder.
# Nothing outside these namespaces, their veths, STATE_DIR and (if it had to be created) /run/sshd is
# touched: sshd runs with its own config, host key and authorized_keys; clients use STATE_DIR/id_ed25519
# with -o UserKnownHostsFile=/dev/null.
set -euo pipefail

prefix="${DISAGG_NETNS_PREFIX:-10.77}"
state="${DISAGG_TWO_HOSTS_DIR:-/tmp/disagg-two-hosts}"
hosts=(spark-01 spark-02)

log() { printf '[two-hosts] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }
idx() { [ "$1" = spark-01 ] && echo 1 || echo 2; }

need_tools() {
  [ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
  command -v ip >/dev/null || die "iproute2 (ip) is missing"
  if [ ! -x /usr/sbin/sshd ]; then
    log "installing openssh-server (sshd is missing)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null; } \
      || die "could not install openssh-server"
  fi
  command -v ssh >/dev/null || die "ssh client is missing"
}

down() {
  for host in "${hosts[@]}"; do
    if [ -f "$state/sshd-$host.pid" ]; then
      kill "$(cat "$state/sshd-$host.pid")" 2>/dev/null || true
    fi
    if ip netns list | grep -qw "^$host"; then
      # Processes still inside (a test that failed before `disagg down`): stop them, then the namespace.
      for pid in $(ip netns pids "$host" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
      sleep 0.5
      for pid in $(ip netns pids "$host" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$host"
    fi
    ip link del "dg-$host" 2>/dev/null || true
  done
  if [ -f "$state/created-run-sshd" ]; then rmdir /run/sshd 2>/dev/null || true; fi
  rm -rf "$state"
  log "removed"
}

make_host() {
  local host="$1" i; i="$(idx "$1")"
  ip netns add "$host"
  nsx "$host" ip link set lo up
  ip link add "dg-$host" type veth peer name eth0 netns "$host"
  ip addr add "$prefix.$i.1/24" dev "dg-$host"
  ip link set "dg-$host" up
  nsx "$host" ip addr add "$prefix.$i.2/24" dev eth0
  nsx "$host" ip link set eth0 up
}

make_kv_link() {
  ip link add kv0 netns spark-01 mtu 9000 type veth peer name kv0 netns spark-02 mtu 9000
  nsx spark-01 ip addr add "$prefix.12.1/24" dev kv0
  nsx spark-02 ip addr add "$prefix.12.2/24" dev kv0
  nsx spark-01 ip link set kv0 up
  nsx spark-02 ip link set kv0 up
}

start_sshd() {
  local host="$1" i; i="$(idx "$1")"
  cat > "$state/sshd-$host.conf" <<EOF
Port 22
ListenAddress $prefix.$i.2
HostKey $state/host_key
AuthorizedKeysFile $state/authorized_keys
PidFile $state/sshd-$host.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 50
LogLevel ERROR
AcceptEnv PYTHONPATH
EOF
  nsx "$host" /usr/sbin/sshd -f "$state/sshd-$host.conf" -E "$state/sshd-$host.log"
}

up() {
  need_tools
  down 2>/dev/null || true
  mkdir -p "$state"
  chmod 700 "$state"
  if [ ! -d /run/sshd ]; then mkdir -p /run/sshd && touch "$state/created-run-sshd"; fi
  ssh-keygen -q -t ed25519 -N '' -C disagg-two-hosts -f "$state/host_key"
  ssh-keygen -q -t ed25519 -N '' -C disagg-two-hosts -f "$state/id_ed25519"
  cp "$state/id_ed25519.pub" "$state/authorized_keys"
  trap 'log "setup failed; cleaning up"; down' ERR
  for host in "${hosts[@]}"; do make_host "$host"; done
  make_kv_link
  for host in "${hosts[@]}"; do start_sshd "$host"; done
  for host in "${hosts[@]}"; do wait_ssh "$host"; done
  trap - ERR
  if [ -n "${rate:-}" ]; then limit "$rate"; fi
  log "ready: spark-01 $prefix.1.2 (kv $prefix.12.1), spark-02 $prefix.2.2 (kv $prefix.12.2); key $state/id_ed25519"
}

ssh_opts() {
  echo -i "$state/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR
}

wait_ssh() {
  local host="$1" i tries; i="$(idx "$1")"
  for tries in $(seq 50); do
    # shellcheck disable=SC2046
    if ssh $(ssh_opts) "root@$prefix.$i.2" true 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  die "sshd in $host does not answer"
}

limit() {
  local rate="${1:?usage: limit RATE (e.g. 1gbit)}"
  for host in "${hosts[@]}"; do
    nsx "$host" tc qdisc replace dev kv0 root tbf rate "$rate" burst 512kb latency 400ms
  done
  log "KV link limited to $rate"
}

unlimit() {
  for host in "${hosts[@]}"; do nsx "$host" tc qdisc del dev kv0 root 2>/dev/null || true; done
  log "KV link unlimited"
}

counters() {
  for host in "${hosts[@]}"; do
    printf '%s kv0 tx_bytes=%s rx_bytes=%s\n' "$host" \
      "$(nsx "$host" cat /sys/class/net/kv0/statistics/tx_bytes)" \
      "$(nsx "$host" cat /sys/class/net/kv0/statistics/rx_bytes)"
  done
}

case "${1:-}" in
  up)
    shift
    rate=""
    if [ "${1:-}" = --rate ]; then rate="${2:?--rate needs a value}"; fi
    up ;;
  down) down ;;
  limit) limit "${2:-}" ;;
  unlimit) unlimit ;;
  counters) counters ;;
  ssh)
    host="${2:?usage: ssh HOST CMD...}"; shift 2
    # shellcheck disable=SC2046
    exec ssh $(ssh_opts) "root@$prefix.$(idx "$host").2" "$@" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
