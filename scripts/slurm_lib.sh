# slurm_lib.sh: what scripts/slurm_local.sh (one node on this host) and
# scripts/cluster_local.sh (N nodes, each a network namespace) share. Source it after
# setting `me` (the name in messages) and `dir` (the cluster folder, absolute).
#   die MSG                 print "$me: error: MSG" and exit 1
#   alive PID / pid_of FILE a live process / the number in a pid file
#   stop_pid FILE NAME      SIGTERM (10 s, then SIGKILL) the pid in FILE if it is NAME
#   need_tools              root and the Slurm and munge programs, or die
#   start_munge             use a running munged or start one (noted in $dir/munged.started)
#   stop_munge              stop the munged that start_munge started, if it did and no
#                           other Slurm daemon (another cluster's) is left to use it
#   host_cpus / host_mem_mb this machine's CPUs (not OMP_NUM_THREADS) and 90% of its memory
#   write_conf_common PORT  the slurm.conf lines every local cluster has, to stdout
#   wait_nodes_idle SECS N...  until every node is idle/mixed/allocated, or die with the logs
#   end_jobs                cancel every job and wait (job steps outlive slurmd)
# Clients are run through `sl_client CMD ARGS` so that cluster_local.sh can run them inside
# the head node's namespace (it redefines sl_client); here they run on this host.

die() {
  echo "$me: error: $*" >&2
  exit 1
}
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -s "$1" ] && tr -dc '0-9' <"$1"; }
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
sl_client() { SLURM_CONF="$dir/slurm.conf" "$@"; }

# stop_pid PIDFILE NAME: SIGTERM, up to 10 s, then SIGKILL; only if the pid is that program
stop_pid() {
  local pid
  pid=$(pid_of "$1") || return 0
  alive "$pid" || return 0
  grep -q "$2" "/proc/$pid/comm" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null
  echo "$me: $2 (pid $pid) did not stop on SIGTERM; killed" >&2
}

need_tools() {
  [ "$(id -u)" -eq 0 ] || die "needs root (slurmd runs jobs as their users)"
  local p
  for p in slurmctld slurmd sinfo munge "$@"; do
    command -v "$p" >/dev/null || die "$p not found: install slurm-wlm and munge (scripts/deps.sh)"
  done
}

# munged is shared with the system (its socket is a path in /run/munge, which every
# network namespace reaches): use a running one, or start one and note that in
# $dir/munged.started so that stop ends only that one.
start_munge() {
  munge_ok && return 0
  command -v munged >/dev/null || die "munged not found: install munge (scripts/deps.sh)"
  id munge >/dev/null 2>&1 || die "no user 'munge': install munge (scripts/deps.sh)"
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munged started but 'munge -n | unmunge' fails"
  cp /run/munge/munged.pid "$dir/munged.started"
}
stop_munge() {
  [ -s "$dir/munged.started" ] || return 0
  # a cluster started after this one found our munged running and uses it: while any Slurm
  # daemon is left (ours are stopped by now), leave munged to it
  if ! pgrep -x slurmctld >/dev/null && ! pgrep -x slurmd >/dev/null; then
    stop_pid "$dir/munged.started" munged
  fi
  rm -f "$dir/munged.started"
}

# plain nproc honours OMP_NUM_THREADS (=1 would leave a 2-task job pending forever)
host_cpus() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }
host_mem_mb() { awk '/^MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo; }

# write_conf_common PORT: everything but the node, partition and per-daemon file lines
write_conf_common() {
  cat <<EOF
AuthType=auth/munge
# a requeued job may start again after cred_expire + 1 s (default 120 s)
AuthInfo=cred_expire=5
CryptoType=crypto/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$1
SlurmdPort=$(($1 + 1))
StateSaveLocation=$dir/state
SlurmctldPidFile=$dir/slurmctld.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerParameters=sched_interval=2
EOF
}

# wait_nodes_idle SECONDS NODE...: every node idle (or running jobs), or die with the logs
wait_nodes_idle() {
  local t=$1 state="" n ready
  shift
  for _ in $(seq $((t * 2))); do
    ready=1
    for n in "$@"; do
      state=$(sl_client sinfo -h -n "$n" -o %T 2>/dev/null | head -1)
      case "$state" in idle* | mix* | alloc*) ;; *) ready=0; break ;; esac
    done
    [ "$ready" -eq 1 ] && return 0
    sleep 0.5
  done
  echo "--- slurmctld.log" >&2
  tail -5 "$dir/slurmctld.log" >&2 2>/dev/null
  local f
  for f in "$dir"/slurmd*.log; do
    [ -e "$f" ] || continue
    echo "--- $(basename "$f")" >&2
    tail -5 "$f" >&2
  done
  die "node $n did not become idle within $t s (state '${state:-unknown}')"
}

# end_jobs: cancel every job of ours and wait until none runs (steps outlive slurmd)
end_jobs() {
  alive "$(pid_of "$dir/slurmctld.pid")" || return 0
  sl_client scancel --full --quiet --user="$(id -un)" 2>/dev/null
  for _ in $(seq 60); do
    [ -z "$(sl_client squeue -h -t R,CG -o %i 2>/dev/null)" ] && break
    sleep 0.25
  done
}
