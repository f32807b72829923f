#!/usr/bin/env bash
# cluster_local.sh: an N-node Slurm cluster inside this machine, for tests and for trying
# multi-node jobs (slurm/train.sbatch -N 2 ...) without a real cluster.
#
#   scripts/cluster_local.sh start N DIR [RATE]  # N nodes, links shaped to RATE (10gbit)
#   scripts/cluster_local.sh status DIR
#   scripts/cluster_local.sh shape DIR RATE      # reshape every link of a running cluster
#   scripts/cluster_local.sh exec DIR NODE CMD...  # CMD in node NODE's network and hostname
#   scripts/cluster_local.sh stop DIR            # idempotent
#
# Node K (node1 .. nodeN) is a network namespace with the address SUBNET.K/24 on its eth0
# and, for its daemons and jobs, a UTS namespace whose hostname is nodeK. The eth0s are
# veth pairs to a bridge that lives in one more namespace (the switch), so the test
# subnet (CLUSTER_LOCAL_SUBNET, default 10.213.0) exists only inside these namespaces:
# nothing of it is on this host's own interfaces. Both directions of every link go
# through a `tc tbf` qdisc at RATE (tc's units: 1gbit, 25gbit, 500mbit; "none" leaves
# the links unshaped). Each node's daemons and jobs see /etc/netns/NAME/hosts (node1 ..
# nodeN) on /etc/hosts (bound there in their own mount namespace, as `ip netns exec` does).
# Daemons: munged (shared with the system, see slurm_lib.sh), slurmctld in node1 (the
# head node, port 6817 of its namespace), one slurmd per node (`slurmd -N nodeK`, port
# 6818 of its own namespace). The file system is the host's: every node sees the same
# files (the "shared file system" of the cluster). Everything the cluster writes lives in
# DIR: slurm.conf, state, spool/nodeK, logs, pid files, and bin/ with sbatch, srun,
# squeue ... wrappers that run the real client in node1 (this host cannot reach the test
# subnet; inside a node they run the client directly). `start` ends by printing the
# `export` lines that point a shell at the cluster.
# `stop` cancels the jobs, stops the slurmds and slurmctld by their pid files, then ends
# by pid whatever is still inside the namespaces (job steps), and deletes the namespaces
# (which removes the veths and the bridge) and /etc/netns/NAME. `start` first does that
# for whatever a crashed earlier cluster in DIR left, and for clusters whose DIR is gone
# (they are registered in /run/mpiformer-cluster). Namespaces are named mpfc<hash of
# DIR>-node1 ..., so clusters in different folders do not meet.
# Needs root, slurm-wlm, munge, iproute2 (ip, tc) and util-linux (unshare).
set -u
cmd=${1:-}
me=cluster_local
# shellcheck source=scripts/slurm_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_lib.sh"
usage="usage: $0 start N DIR [RATE] | stop DIR | status DIR | shape DIR RATE | exec DIR NODE CMD..."
case "$cmd" in
  start)
    nodes=${2:-}
    dir=${3:-}
    rate=${4:-10gbit}
    case "$nodes" in '' | *[!0-9]*) die "$usage" ;; esac
    [ "$nodes" -ge 1 ] && [ "$nodes" -le 64 ] || die "N must be 1 .. 64, not $nodes"
    ;;
  stop | status | shape | exec) dir=${2:-} ;;
  *) die "$usage" ;;
esac
[ -n "$dir" ] || die "$usage"
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
dir=${dir%/}
conf="$dir/slurm.conf"
registry=/run/mpiformer-cluster
subnet=${CLUSTER_LOCAL_SUBNET:-10.213.0}
port=${CLUSTER_LOCAL_PORT:-6817}

# the namespace names of the cluster in folder $1
tag_of() { printf 'mpfc%s' "$(printf %s "$1" | md5sum | cut -c1-6)"; }
tag=$(tag_of "$dir")
ns_node() { echo "$tag-node$1"; }
ns_sw="$tag-sw"
# clients run in node1 (sl_client of slurm_lib.sh), unless already inside one of the nodes
in_node() {
  local me_ns f
  me_ns=$(stat -L -c %i /proc/self/ns/net)
  for f in /run/netns/"$tag"-node*; do
    [ -e "$f" ] && [ "$(stat -L -c %i "$f")" = "$me_ns" ] && return 0
  done
  return 1
}
sl_client() {
  if in_node; then SLURM_CONF="$conf" "$@"
  else SLURM_CONF="$conf" nsenter --net="/run/netns/$(ns_node 1)" "$@"; fi
}

# tbf_args RATE: "rate R burst B latency L" with a burst of 1 ms at RATE (at least 128 KiB,
# so that a GSO packet of 64 KiB always fits)
tbf_args() {
  local bits
  bits=$(awk -v r="$1" 'BEGIN {
    n = r + 0; u = tolower(r); sub(/^[0-9.]+/, "", u)
    m = (u == "bit" || u == "") ? 1 : (u == "kbit") ? 1e3 : (u == "mbit") ? 1e6 : \
        (u == "gbit") ? 1e9 : (u == "tbit") ? 1e12 : -1
    if (n <= 0 || m < 0) exit 1
    printf "%.0f", n * m }') || die "rate '$1': give it as tc does (e.g. 10gbit, 500mbit)"
  local burst=$((bits / 8 / 1000))
  [ "$burst" -lt 131072 ] && burst=131072
  echo "rate $bits burst $burst latency 20ms"
}

# shape_links RATE: tbf on both ends of every veth (node -> switch and switch -> node)
shape_links() {
  local k args n
  n=$(cat "$dir/nodes")
  if [ "$1" = none ]; then
    for k in $(seq "$n"); do
      ip -n "$(ns_node "$k")" link set eth0 up
      tc -n "$(ns_node "$k")" qdisc del dev eth0 root 2>/dev/null
      tc -n "$ns_sw" qdisc del dev "v$k" root 2>/dev/null
    done
  else
    args=$(tbf_args "$1") || exit 1
    for k in $(seq "$n"); do
      # shellcheck disable=SC2086
      tc -n "$(ns_node "$k")" qdisc replace dev eth0 root tbf $args &&
        tc -n "$ns_sw" qdisc replace dev "v$k" root tbf $args || die "tc tbf on link $k failed"
    done
  fi
  echo "$1" >"$dir/rate"
}

# teardown TAG: end by pid every process inside the cluster TAG's namespaces (TERM, then
# KILL after 5 s), delete the namespaces (their veths and bridge go with them) and
# /etc/netns/NAME
teardown() {
  local t=$1 ns pids left
  local all
  all=$(ip netns list 2>/dev/null | awk -v t="$t-" 'index($1, t) == 1 {print $1}')
  pids=""
  for ns in $all; do pids="$pids $(ip netns pids "$ns" 2>/dev/null)"; done
  # shellcheck disable=SC2086
  [ -n "${pids// /}" ] && kill -TERM $pids 2>/dev/null
  for _ in $(seq 25); do
    left=""
    for p in $pids; do alive "$p" && left="$left $p"; done
    [ -z "$left" ] && break
    sleep 0.2
  done
  # shellcheck disable=SC2086
  [ -n "$left" ] && kill -KILL $left 2>/dev/null
  for ns in $all; do
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
  done
  rm -f "$registry/$t"
}

# clusters whose folder is gone (a crashed test that removed its temporary folder)
teardown_orphans() {
  local f d
  for f in "$registry"/mpfc*; do
    [ -e "$f" ] || continue
    d=$(cat "$f")
    [ -f "$d/slurm.conf" ] && continue
    echo "$me: removing the cluster of $d (its folder is gone)" >&2
    teardown "$(basename "$f")"
  done
}

write_conf() {
  local k cpus mem
  cpus=$(host_cpus)
  mem=$(($(host_mem_mb) / nodes))
  {
    echo "# generated by scripts/cluster_local.sh: $nodes nodes in network namespaces"
    echo "ClusterName=mpiformer-box"
    echo "SlurmctldHost=node1($subnet.1)"
    write_conf_common "$port"
    # every slurmd in its own namespace: the same port, its own spool, pid and log files
    echo "SlurmdSpoolDir=$dir/spool/%n"
    echo "SlurmdPidFile=$dir/slurmd.%n.pid"
    echo "SlurmdLogFile=$dir/slurmd.%n.log"
    # every node has all of this machine's CPUs: the nodes share them
    for k in $(seq "$nodes"); do
      echo "NodeName=node$k NodeAddr=$subnet.$k NodeHostname=node$k CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    done
    echo "TmpFS=$dir/nodetmp"
    echo "PartitionName=box Nodes=node[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  } >"$conf"
  echo "PMIxCliTmpDirBase=$dir/nodetmp" >"$dir/mpi.conf"
}

# on_node K CMD...: CMD in node K's network namespace, in a new UTS namespace named nodeK
# and a new mount namespace with the node's hosts file on /etc/hosts and its own folder
# DIR/tmp/nodeK on DIR/nodetmp (node-local scratch, as /tmp is on a real node: Slurm's
# PMIx plugin makes a folder there named after the job step only, so nodes that shared it
# would collide). Not `ip netns exec`: it mounts a fresh /sys, without the cgroup file
# system that slurmd needs.
on_node() {
  local k=$1
  shift
  mkdir -p "$dir/tmp/node$k" "$dir/nodetmp"
  nsenter --net="/run/netns/$(ns_node "$k")" unshare --uts --mount sh -c \
    'mount --bind "$0" /etc/hosts && mount --bind "$1" "$2" && hostname "$3" && shift 3 &&
     exec "$@"' "/etc/netns/$(ns_node "$k")/hosts" "$dir/tmp/node$k" "$dir/nodetmp" "node$k" "$@"
}
# run_in K DAEMON...: a daemon started so keeps the three namespaces for itself and its
# jobs; in a session of its own (setsid), it outlives the shell that started it
run_in() { setsid -w "$0" exec "$dir" "$@"; }

write_clients() {
  local c real
  mkdir -p "$dir/bin"
  for c in sbatch srun salloc squeue scancel scontrol sinfo sacct sattach sbcast sstat; do
    real=$(command -v "$c") || continue
    cat >"$dir/bin/$c" <<EOF
#!/bin/sh
# generated by scripts/cluster_local.sh: $c of the cluster in $dir, run in node1 when
# called from outside the cluster's nodes (this host cannot reach the cluster's subnet)
for f in /run/netns/$tag-node*; do
  [ "\$(stat -L -c %i "\$f")" = "\$(stat -L -c %i /proc/self/ns/net)" ] && exec $real "\$@"
done
exec nsenter --net=/run/netns/$(ns_node 1) $real "\$@"
EOF
    chmod +x "$dir/bin/$c"
  done
}

exports() {
  echo "export SLURM_CONF=$conf"
  echo "export PATH=$dir/bin:\$PATH"
  # the nodes share this machine's CPUs: ranks that spin in MPI while they wait would take
  # them from the ranks they wait for (a checkpoint's hundreds of small collectives went
  # from 10 s to under 1 s with this)
  echo "export OMPI_MCA_mpi_yield_when_idle=1"
  # every node sees the whole machine, so mpirun's default binding would put each node's
  # first rank on core 0: all of them on one core
  echo "export OMPI_MCA_hwloc_base_binding_policy=none"
  if [ "$(id -u)" -eq 0 ]; then
    echo "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
  fi
}

daemons_alive() {
  local k
  alive "$(pid_of "$dir/slurmctld.pid")" || return 1
  for k in $(seq "$(cat "$dir/nodes" 2>/dev/null || echo 0)"); do
    alive "$(pid_of "$dir/slurmd.node$k.pid")" || return 1
  done
  [ -s "$dir/nodes" ]
}

stop() {
  [ -d "$dir" ] || { teardown "$tag"; return 0; }
  local n k
  n=$(cat "$dir/nodes" 2>/dev/null || echo 0)
  if ip netns list 2>/dev/null | grep -q "^$(ns_node 1) "; then end_jobs; fi
  for k in $(seq "$n"); do stop_pid "$dir/slurmd.node$k.pid" slurmd; done
  stop_pid "$dir/slurmctld.pid" slurmctld
  teardown "$tag" # job steps left in the namespaces, then the namespaces themselves
  stop_munge
  return 0
}

start() {
  need_tools ip tc unshare nsenter md5sum
  if [ -f "$dir/nodes" ] && [ "$(cat "$dir/nodes")" = "$nodes" ] && daemons_alive; then
    echo "$me: already running in $dir ($nodes nodes)"
    exports
    return 0
  fi
  mkdir -p "$dir/state" "$dir/spool" "$registry" || die "cannot create $dir"
  stop # whatever an earlier start in DIR left
  teardown_orphans
  rm -f "$dir"/slurmd.node*.pid "$dir/slurmctld.pid"
  echo "$dir" >"$registry/$tag"
  echo "$nodes" >"$dir/nodes"
  start_munge
  trap 'stop' EXIT # a start that dies leaves nothing behind
  # the switch: a bridge in its own namespace; node K: eth0 = SUBNET.K, veth to port vK
  ip netns add "$ns_sw" || die "ip netns add $ns_sw failed"
  ip -n "$ns_sw" link set lo up
  ip -n "$ns_sw" link add br0 type bridge || die "cannot make a bridge in $ns_sw"
  ip -n "$ns_sw" link set br0 up
  local k j ns
  for k in $(seq "$nodes"); do
    ns=$(ns_node "$k")
    ip netns add "$ns" || die "ip netns add $ns failed"
    ip link add eth0 netns "$ns" type veth peer name "v$k" netns "$ns_sw" ||
      die "cannot make the veth pair of node$k"
    ip -n "$ns_sw" link set "v$k" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$subnet.$k/24" dev eth0
    ip -n "$ns" link set eth0 up
    mkdir -p "/etc/netns/$ns"
    {
      printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
      for j in $(seq "$nodes"); do printf '%s.%s\tnode%s\n' "$subnet" "$j" "$j"; done
    } >"/etc/netns/$ns/hosts"
  done
  shape_links "$rate"

  write_conf
  write_clients
  run_in 1 slurmctld -f "$conf" ||
    die "slurmctld did not start: $(tail -3 "$dir/slurmctld.log" 2>/dev/null)"
  for k in $(seq "$nodes"); do
    mkdir -p "$dir/spool/node$k"
    run_in "$k" slurmd -f "$conf" -N "node$k" ||
      die "slurmd of node$k did not start: $(tail -3 "$dir/slurmd.node$k.log" 2>/dev/null)"
  done
  local all=()
  for k in $(seq "$nodes"); do all+=("node$k"); done
  wait_nodes_idle 60 "${all[@]}"
  trap - EXIT
  echo "$me: $nodes nodes idle (node1 .. node$nodes on $subnet.0/24, links $rate, slurmctld on node1)"
  exports
}

status() {
  local rc=0 k n
  n=$(cat "$dir/nodes" 2>/dev/null || echo 0)
  if alive "$(pid_of "$dir/slurmctld.pid")"; then echo "slurmctld: running (pid $(pid_of "$dir/slurmctld.pid"))"
  else echo "slurmctld: stopped"; rc=1; fi
  for k in $(seq "$n"); do
    if alive "$(pid_of "$dir/slurmd.node$k.pid")"; then
      echo "slurmd node$k: running (pid $(pid_of "$dir/slurmd.node$k.pid"))"
    else echo "slurmd node$k: stopped"; rc=1; fi
  done
  echo "links: $(cat "$dir/rate" 2>/dev/null || echo '?')"
  if munge_ok; then echo "munged: running"; else echo "munged: not running"; rc=1; fi
  [ $rc -eq 0 ] && sl_client sinfo
  return $rc
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  shape)
    [ -n "${3:-}" ] && [ -s "$dir/nodes" ] || die "$usage (on a started cluster)"
    shape_links "$3"
    echo "$me: links $3"
    ;;
  exec)
    node=${3:-}
    shift 3 2>/dev/null || die "$usage"
    [ $# -gt 0 ] || die "$usage"
    case "$node" in node[0-9]*) node=${node#node} ;; esac
    on_node "$node" "$@"
    ;;
esac
