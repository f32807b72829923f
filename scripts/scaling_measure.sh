#!/usr/bin/env bash
# scaling_measure.sh: the measurements behind docs/SCALING.md, on the 2-node in-box cluster
# (scripts/cluster_local.sh), one rank per node.
#
#   scripts/scaling_measure.sh OUTDIR [RATES...]     (as root; RATES default: 1gbit 10gbit 25gbit)
#
# It starts the cluster in SCALING_CLUSTER_DIR (default /tmp/mpiformer-scaling.box), or uses
# the one running there (then leaves it running; a cluster it started is stopped on exit),
# and writes into OUTDIR (JSON lines, one file per rate and kind):
#   machine.txt             date, CPU model and flags (lscpu), cores, Open MPI, load
#   runs.jsonl              one line per run: file, command, load average before and after,
#                           seconds
#   compute_alone.jsonl     bench_model base 64 32 STEPS on 1 rank in node1: the step with
#                           no communication (the DP efficiency's denominator)
# and for each RATE (the links reshaped to it):
#   compute_pair_RATE.jsonl the same 1-rank run in node1 and node2 at the same time (two
#                           lines): the per-rank compute rate with both cores busy, as in the
#                           2-rank runs, measured just before them (the machine's load from
#                           other work changes from minute to minute)
#   comm_RATE.jsonl         bench_comm 4K .. 128M on 2 ranks: allreduce, reduce_scatter,
#                           allgather, rs_ag, p2p
#   comm_extra_RATE.jsonl   bench_comm allreduce 1M .. 128M with Open MPI's recursive doubling
#                           (coll_tuned_allreduce_algorithm=3) instead of its default choice,
#                           op renamed allreduce_rd; and Iallreduce of 64M under compute with
#                           MPI_Test every 1, 10, 100 ms or never (op iallreduce_overlap)
#   step_RATE_overlap0.jsonl, step_RATE_overlap1.jsonl   bench_model base 64 32 STEPS on 2
#                           ranks (dp=2) with MPIFORMER_GRAD_OVERLAP=0 / 1
#   step_RATE_overlap1_bucketMB.jsonl   with MPIFORMER_GRAD_BUCKET_MB=MB for each MB in
#                           SCALING_BUCKETS (default none), at the first rate only
#   step_RATE_pp2.jsonl     bench_pp tput base 1 2 1 16 32 4 STEPS: pp=2 across the nodes, 4
#                           micro-batches of 16 x 32 (at SCALING_PP_RATE only, default 10gbit)
# and, inside node1 (2 ranks, shared memory):
#   comm_shm.jsonl          bench_comm as above
#   step_shm_tp2.jsonl      bench_model base 64 32 STEPS 0 1x2: tp=2
# Every bench_model and bench_pp file also has one {"maxrss_kb":N} line per rank (/usr/bin/time).
# bench_model's JSON lines get "rate", "env_grad_overlap", "bucket_mb" and "node" fields
# added (env_grad_overlap: the MPIFORMER_GRAD_OVERLAP it ran with).
# SCALING_STEPS (default 3) timed steps after bench_model's warm-up step; SCALING_COMM_MAX
# (default 128M) the largest message. With the defaults it takes about 15 minutes on a
# 2-core machine (a base step is 6-10 s there). Then: /usr/bin/python3 scripts/scaling_model.py OUTDIR
set -u
me=scaling_measure
die() {
  echo "$me: error: $*" >&2
  exit 1
}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-}
[ -n "$out" ] || die "usage: $0 OUTDIR [RATES...]"
shift
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(1gbit 10gbit 25gbit)
steps=${SCALING_STEPS:-3}
comm_max=${SCALING_COMM_MAX:-128M}
buckets=${SCALING_BUCKETS:-}
pp_rate=${SCALING_PP_RATE:-10gbit}
# the recursive-doubling sizes: from 1 MiB (or the largest size, if smaller)
bytes_of() { awk -v s="$1" 'BEGIN { n = s + 0; u = toupper(substr(s, length(s)));
  print (u == "K") ? n * 1024 : (u == "M") ? n * 1048576 : n }'; }
extra_lo=1M
[ "$(bytes_of "$comm_max")" -lt 1048576 ] && extra_lo=$comm_max
cdir=${SCALING_CLUSTER_DIR:-/tmp/mpiformer-scaling.box}
BUILD=${BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD="$root/$BUILD" ;; esac
for b in bench_comm bench_model bench_pp; do
  [ -x "$BUILD/bench/$b" ] || die "$BUILD/bench/$b not built: run make"
done
[ "$(id -u)" -eq 0 ] || die "needs root (the in-box cluster)"
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/scaling_measure.XXXXXX)

started=0
cleanup() {
  [ "$started" = 1 ] && "$root/scripts/cluster_local.sh" stop "$cdir" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

s=$("$root/scripts/cluster_local.sh" start 2 "$cdir" "${rates[0]}" 2>&1) ||
  die "cannot start the cluster in $cdir: $s"
grep -q 'already running' <<<"$s" || started=1
eval "$(grep '^export ' <<<"$s")"
# one BLAS thread per rank; sbatch passes the environment to the jobs, mpirun the
# OMPI_MCA_* variables to the other node
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
# as the tests: single-copy (CMA) between the ranks of one node is not allowed in every
# container; the shared-memory runs then copy through the shared segment
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-Haswell}
# --bind-to none: the nodes share this machine's cores, and mpirun's default binding (to a
# core, with 2 ranks or fewer a node) puts the first rank of every node on core 0, so the
# two "nodes" would compute on one core (a 2-rank base step took 2-3x a 1-rank one)
printf '#!/bin/sh\nexec mpirun --bind-to none "$@"\n' >"$work/job.sh"
chmod +x "$work/job.sh"

load() { cut -d' ' -f1-3 /proc/loadavg; }
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L2|L3)'
  echo "avx flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|amx|f16c)' | sort -u | xargs)"
  lscpu | grep '^Flags'
  echo "memory: $(free -g | awk '/^Mem/ {print $2}') GiB"
  echo "open mpi: $(mpirun --version 2>/dev/null | head -1)"
  echo "OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-}"
  echo "steps: $steps, rates: ${rates[*]}, buckets: ${buckets:-none}"
  echo "uptime at start: $(uptime)"
} >"$out/machine.txt"
: >"$out/runs.jsonl"

# wait_job ID: until the job ends (polled every second: sbatch --wait backs off to tens of
# seconds); 0 if it COMPLETED with exit code 0
wait_job() {
  local st miss=0
  while :; do
    st=$(scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*\|ExitCode=[0-9:]*' | tr '\n' ' ')
    case "$st" in
      *JobState=COMPLETED*) [[ "$st" == *ExitCode=0:0* ]]; return ;;
      *JobState=PENDING* | *JobState=RUNNING* | *JobState=CONFIGURING* | *JobState=COMPLETING*) sleep 1 ;;
      "") # slurmctld busy: a few tries
        miss=$((miss + 1))
        [ $miss -gt 30 ] && return 1
        sleep 1 ;;
      *) return 1 ;;
    esac
  done
}

# job FILE EXTRA_FIELDS SBATCH_ARGS -- PROGRAM ARGS: one batch job, waited for; its JSON lines
# (with EXTRA_FIELDS appended to each object) go to FILE (appended); the load and seconds
# to runs.jsonl
job() {
  local file=$1 extra=$2 tag
  shift 2
  local args=()
  while [ "$1" != -- ]; do args+=("$1"); shift; done
  shift
  tag=$(basename "$file" .jsonl)$RANDOM
  # /usr/bin/time: each rank appends its line to a file of this job's (one buffered write
  # each); on stderr two ranks' lines came out written into each other
  [ "$1" = /usr/bin/time ] && set -- "$1" -a -o "$work/$tag.rss" "${@:2}"
  local l0 t0 rc
  l0=$(load)
  t0=$SECONDS
  rc=1
  if sbatch --parsable "${args[@]}" -o "$work/$tag.out" "$work/job.sh" "$@" >"$work/$tag.id" 2>&1; then
    wait_job "$(cat "$work/$tag.id")"
    rc=$?
  fi
  grep -h '^{' "$work/$tag.out" "$work/$tag.rss" 2>/dev/null | sed "s/}\$/$extra}/" >>"$out/$file"
  printf '{"file":"%s","cmd":"%s","sbatch":"%s","load_before":"%s","load_after":"%s","seconds":%d,"rc":%d}\n' \
    "$file" "$(sed "s|$root/||g; s|$BUILD/|build/|g" <<<"$*")" "${args[*]}" "$l0" "$(load)" $((SECONDS - t0)) $rc \
    >>"$out/runs.jsonl"
  if [ $rc -ne 0 ] || ! grep -q '^{' "$work/$tag.out"; then
    echo "$me: the job for $file failed (rc $rc):" >&2
    tail -15 "$work/$tag.out" "$work/$tag.id" >&2
    exit 1
  fi
}
two=(-N 2 --ntasks-per-node=1)
# each rank's peak resident memory as one more JSON line ({"maxrss_kb":...}), for the model's
# memory figures
rss=(/usr/bin/time -f '{"maxrss_kb":%M}')
model=("${rss[@]}" "$BUILD/bench/bench_model" base 64 32 "$steps")

# the compute baseline: 1 rank alone, then 1 rank in each node at the same time
pair() {
  local file=$1
  (MPIFORMER_GRAD_OVERLAP=0 job "$file" ',"node":"node1"' -N 1 -n 1 -w node1 -- "${model[@]}") &
  local p1=$!
  (MPIFORMER_GRAD_OVERLAP=0 job "$file" ',"node":"node2"' -N 1 -n 1 -w node2 -- "${model[@]}") &
  local p2=$!
  wait $p1 && wait $p2 || exit 1
}
echo "$me: compute baseline, bench_model base 64 32 $steps on 1 rank (load $(load))"
MPIFORMER_GRAD_OVERLAP=0 job compute_alone.jsonl ',"node":"node1"' -N 1 -n 1 -w node1 -- "${model[@]}"

# tensor parallelism inside one node (shared memory), as docs/CLUSTER.md advises: the
# messages' times there, and base as tp=2 (1x2 grid), for the model's TP term
echo "$me: shared memory (2 ranks in node1): bench_comm 4K .. $comm_max; base as tp=2 (1x2)"
job comm_shm.jsonl "" -N 1 -n 2 -w node1 -- "$BUILD/bench/bench_comm" 4K "$comm_max"
job step_shm_tp2.jsonl ',"rate":"shm"' -N 1 -n 2 -w node1 -- "${model[@]}" 0 1x2

first=1
for rate in "${rates[@]}"; do
  "$root/scripts/cluster_local.sh" shape "$cdir" "$rate" >/dev/null || die "cannot shape the links to $rate"
  echo "$me: $rate: bench_comm 4K .. $comm_max (load $(load))"
  job "comm_$rate.jsonl" "" "${two[@]}" -- "$BUILD/bench/bench_comm" 4K "$comm_max"
  echo "$me: $rate: all-reduce by recursive doubling; Iallreduce under compute"
  OMPI_MCA_coll_tuned_use_dynamic_rules=1 OMPI_MCA_coll_tuned_allreduce_algorithm=3 \
    job "comm_extra_$rate.jsonl" "" "${two[@]}" -- "$BUILD/bench/bench_comm" "$extra_lo" "$comm_max" allreduce
  sed -i 's/"op":"allreduce"/"op":"allreduce_rd"/' "$out/comm_extra_$rate.jsonl"
  job "comm_extra_$rate.jsonl" "" "${two[@]}" -- "$BUILD/bench/bench_comm" 64M 64M overlap
  echo "$me: $rate: compute baseline, 1 rank in node1 and 1 in node2 at once (load $(load))"
  pair "compute_pair_$rate.jsonl"
  for ov in 0 1; do
    echo "$me: $rate: bench_model base 64 32 $steps on 2 ranks, MPIFORMER_GRAD_OVERLAP=$ov (load $(load))"
    MPIFORMER_GRAD_OVERLAP=$ov job "step_${rate}_overlap$ov.jsonl" ",\"rate\":\"$rate\",\"env_grad_overlap\":$ov,\"bucket_mb\":null" \
      "${two[@]}" -- "${model[@]}"
  done
  if [ $first = 1 ]; then
    for mb in $buckets; do
      echo "$me: $rate: MPIFORMER_GRAD_OVERLAP=1 MPIFORMER_GRAD_BUCKET_MB=$mb"
      MPIFORMER_GRAD_OVERLAP=1 MPIFORMER_GRAD_BUCKET_MB=$mb job "step_${rate}_overlap1_bucket$mb.jsonl" \
        ",\"rate\":\"$rate\",\"env_grad_overlap\":1,\"bucket_mb\":$mb" "${two[@]}" -- "${model[@]}"
    done
  fi
  if [ "$rate" = "$pp_rate" ]; then
    echo "$me: $rate: base as pp=2 (stage 0 in node1, stage 1 in node2), 4 micro-batches of 16x32"
    job "step_${rate}_pp2.jsonl" ",\"rate\":\"$rate\"" "${two[@]}" -- "${rss[@]}" "$BUILD/bench/bench_pp" tput base 1 2 1 16 32 4 "$steps"
  fi
  first=0
done

echo "uptime at end: $(uptime)" >>"$out/machine.txt"
echo "$me: done in $SECONDS s; results in $out (next: /usr/bin/python3 scripts/scaling_model.py $out)"
