#!/usr/bin/env bash
# test_cluster.sh: multi-node jobs on a 2-node Slurm cluster inside this machine
# (scripts/cluster_local.sh: each node a network namespace with its own hostname and
# address, links through a bridge, shaped with tbf), submitted as users do, as root:
#  - the cluster: hostnames node1/node2, the nodes' addresses, tbf on every link, 2 idle
#    nodes;
#  - `sbatch -N 2 --ntasks-per-node=2 slurm/train.sbatch` (mpirun) trains dp=2 x pp=2:
#    while it runs, its ranks are found in both nodes' namespaces (2 each, hostnames node1
#    and node2) and `ss` in node1 shows mpiformer's TCP connections from node1's address to
#    node2's; `scancel --signal=USR1 --batch` checkpoints, requeues (Restarts=1), resumes;
#    the per-step losses and gradient norms equal a one-host run of the same layout, bit
#    for bit, and so do the final weights and Adam moments (a checkpoint both nodes wrote);
#  - a 1-rank `eval` reads that checkpoint and gives the one-host run's numbers;
#  - MPIFORMER_LAUNCHER=srun (srun --mpi=pmix) trains tp=2 with one rank per node (the TP
#    grid split across the nodes): losses bit for bit those of tp=2 on one host.
# Needs root, slurm-wlm, munge, iproute2; if the cluster cannot be started the test FAILS
# with the reason. The cluster lives in a fixed folder, so a run after a crashed one
# removes what that one left; flock keeps two runs from sharing it.
set -u
source "$(dirname "$0")/lib.sh"
root=$PWD
case "$BIN" in /*) ;; *) BIN="$root/$BIN" ;; esac
cdir=/tmp/mpiformer_test_cluster.box
exec 9>"$cdir.lock"
flock -w 900 9 || { bad "another test_cluster holds $cdir.lock"; finish; }
cleanup() {
  scripts/cluster_local.sh stop "$cdir" >/dev/null 2>&1
  rm -rf "$tmp" "$cdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
steps=${TEST_CLUSTER_STEPS:-120}
# the nodes share this machine's CPUs (see cluster_local.sh); the one-host runs the same
export OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_hwloc_base_binding_policy=none

source "$(dirname "$0")/lib_slurm.sh"
# node_ranks NODE: "pid hostname" of each mpiformer process in NODE's network namespace
node_ranks() {
  "$root/scripts/cluster_local.sh" exec "$cdir" "$1" sh -c '
    me=$(readlink /proc/self/ns/net)
    for p in $(pgrep -x mpiformer); do
      [ "$(readlink /proc/$p/ns/net)" = "$me" ] && echo "$p $(nsenter -t $p -u hostname)"
    done'
}

[ -x "$BIN" ] || { bad "$BIN not built"; finish; }
$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 --seed 3 >/dev/null ||
  { bad "cannot build the tiny dataset"; finish; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 64" \
  "ffn_dim = 128" "heads = 4" "norm = pre" "dropout = 0.1" "attn_dropout = 0.1" \
  "act_dropout = 0.1" "lr = 3e-3" "warmup_steps = 0" "lr_scheduler = constant" \
  "max_tokens = 160" "log_interval = 1" "eval_interval = 100000" "eval_bleu = 0" "beam = 1" \
  "save_interval = 20" "keep_last = 2" "max_steps = $steps" > "$tmp/c.conf"

echo "one-host references: dp=2 x pp=2 (4 ranks) and tp=2 (2 ranks), $steps steps"
t0=$SECONDS
run 4 train "$tmp/c.conf" out="$tmp/ref_pp" pp=2 >"$tmp/ref_pp.log" 2>&1 &&
  run 2 train "$tmp/c.conf" out="$tmp/ref_tp" tp=2 max_steps=30 >"$tmp/ref_tp.log" 2>&1 ||
  { bad "one-host reference runs failed"; tail -5 "$tmp"/ref_*.log; finish; }
echo "    $((SECONDS - t0)) s"
final=ckpt/ckpt_$(printf %08d "$steps").h5

echo "the cluster: scripts/cluster_local.sh start 2 (links 10gbit)"
t0=$SECONDS
if out=$(scripts/cluster_local.sh start 2 "$cdir" 2>&1); then
  ok "2 nodes up in $((SECONDS - t0)) s: $(grep -m1 idle <<<"$out")"
else bad "cannot start the cluster: $out"; finish; fi
eval "$(grep '^export ' <<<"$out")"
h1=$(scripts/cluster_local.sh exec "$cdir" node1 hostname)
h2=$(scripts/cluster_local.sh exec "$cdir" node2 hostname)
a2=$(scripts/cluster_local.sh exec "$cdir" node2 ip -o -4 addr show dev eth0 | awk '{print $4}')
q=$(scripts/cluster_local.sh exec "$cdir" node1 tc qdisc show dev eth0)
if [ "$h1" = node1 ] && [ "$h2" = node2 ] && [ "$a2" = 10.213.0.2/24 ] && grep -q 'tbf.*rate 10Gbit' <<<"$q" &&
  [ "$(sinfo -h -o '%D %T')" = "2 idle" ]; then
  ok "hostnames $h1 $h2, node2 at $a2, link: ${q%% burst*}, sinfo: 2 idle"
else bad "cluster: hostnames '$h1' '$h2', node2 '$a2', qdisc '$q', sinfo '$(sinfo -h -o '%D %T')'"; fi

mkdir -p "$tmp/submit"
cd "$tmp/submit" || exit 1
export MPIFORMER_BIN="$BIN" MPIFORMER_RUNS="$tmp/runs"

echo "sbatch -N 2 --ntasks-per-node=2: dp=2 x pp=2 with mpirun, preempted and requeued"
id=$(MPIFORMER_RUN_NAME=pp sbatch --parsable -N 2 --ntasks-per-node=2 -o "$tmp/pp.out" \
  "$root/slurm/train.sbatch" "$tmp/c.conf" pp=2 2>"$tmp/sbatch.err")
[ -n "$id" ] || { bad "sbatch failed: $(cat "$tmp/sbatch.err")"; finish; }
m="$tmp/runs/pp/metrics.jsonl"
n=0
for _ in $(seq 480); do # 120 s
  n=$(n_train "$m")
  [ "${n:-0}" -ge 25 ] && [ -s "$tmp/runs/pp/ckpt/latest" ] && break
  case "$(job_field "$id" JobState)" in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL) break ;;
  esac
  sleep 0.25
done
# where the ranks are and how they talk, while they train
r1=$(node_ranks node1)
r2=$(node_ranks node2)
tcp=$("$root/scripts/cluster_local.sh" exec "$cdir" node1 ss -Htnp state established \
  '( src 10.213.0.1 and dst 10.213.0.2 )' | grep '"mpiformer"')
if [ "$(wc -l <<<"$r1")" -eq 2 ] && [ "$(wc -l <<<"$r2")" -eq 2 ] &&
  [ "$(awk '{print $2}' <<<"$r1" | sort -u)" = node1 ] && [ "$(awk '{print $2}' <<<"$r2" | sort -u)" = node2 ]; then
  ok "2 ranks in node1's namespace (hostname node1), 2 in node2's (hostname node2)"
else bad "ranks by node: node1 [$(tr '\n' ' ' <<<"$r1")] node2 [$(tr '\n' ' ' <<<"$r2")]"; fi
if [ -n "$tcp" ]; then
  ok "$(wc -l <<<"$tcp") TCP connections of mpiformer from 10.213.0.1 to 10.213.0.2, e.g. $(head -1 <<<"$tcp" | awk '{print $3, "->", $4}')"
else bad "no TCP connection of mpiformer between the nodes' addresses"; fi
if [ "${n:-0}" -ge 25 ] && [ "${n:-0}" -lt $((steps - 20)) ] && [ -s "$tmp/runs/pp/ckpt/latest" ]; then
  ok "job $id running on $(job_field "$id" NodeList): $n steps, checkpoint $(cat "$tmp/runs/pp/ckpt/latest")"
  scancel --signal=USR1 --batch "$id"
  t0=$SECONDS
  for _ in $(seq 240); do
    [ "$(job_field "$id" Restarts)" = 1 ] && break
    sleep 0.25
  done
  if [ "$(job_field "$id" Restarts)" = 1 ]; then ok "requeued (Restarts=1) $((SECONDS - t0)) s after SIGUSR1"
  else bad "not requeued: Restarts=$(job_field "$id" Restarts) state $(job_field "$id" JobState)"; fi
else
  bad "job $id did not reach the preemption window (state $(job_field "$id" JobState), $n steps)"
  tail -20 "$tmp/pp.out"
fi
state=$(wait_state "$id" 180 COMPLETED FAILED CANCELLED TIMEOUT)
if [ "$state" = COMPLETED ] && [ "$(job_field "$id" ExitCode)" = 0:0 ] && grep -qF "resumed from" "$tmp/pp.out" &&
  grep -q '"type":"preempted"' "$m"; then
  ok "job finished: COMPLETED 0:0 after a checkpoint, a requeue and a resume ($SECONDS s into the test)"
else bad "job ended $state (ExitCode $(job_field "$id" ExitCode))"; tail -20 "$tmp/pp.out"; fi
loss_gnorm "$tmp/ref_pp/metrics.jsonl" >"$tmp/ref_pp.loss"
loss_gnorm "$m" >"$tmp/pp.loss"
if [ -s "$tmp/ref_pp.loss" ] && cmp -s "$tmp/pp.loss" "$tmp/ref_pp.loss"; then
  ok "per-step loss and gnorm of all $(wc -l <"$tmp/pp.loss") steps identical to one host's dp=2 x pp=2"
else bad "2-node losses differ from one host's"; diff "$tmp/pp.loss" "$tmp/ref_pp.loss" | head -5; fi
ckpt_sums "$tmp/ref_pp/$final" >"$tmp/ref.sums" 2>&1
ckpt_sums "$tmp/runs/pp/$final" >"$tmp/pp.sums" 2>&1
if [ -s "$tmp/ref.sums" ] && cmp -s "$tmp/ref.sums" "$tmp/pp.sums"; then
  ok "the checkpoint both nodes wrote: weights and Adam moments identical ($(wc -l <"$tmp/ref.sums") dataset checksums)"
else bad "final checkpoints differ"; diff "$tmp/pp.sums" "$tmp/ref.sums" | head -5; fi

echo "1-rank eval of the 2-node checkpoint"
e2=$(cd "$root" && run 1 eval "$tmp/c.conf" ckpt="$tmp/runs/pp/$final" split=valid 2>&1 | tail -1)
e1=$(cd "$root" && run 1 eval "$tmp/c.conf" ckpt="$tmp/ref_pp/$final" split=valid 2>&1 | tail -1)
# the same numbers (not the same "ckpt" path and "seconds")
strip() { sed -E 's/,"(ckpt|seconds)":("[^"]*"|[0-9.e+-]+)//g' <<<"$1"; }
if grep -q '"loss"' <<<"$e2" && [ "$(strip "$e2")" = "$(strip "$e1")" ]; then ok "eval: $(strip "$e2" | cut -c1-90)..."
else bad "eval of the 2-node checkpoint: '$e2', of the one-host one: '$e1'"; fi

echo "MPIFORMER_LAUNCHER=srun -N 2 --ntasks-per-node=1: tp=2 across the nodes"
id=$(MPIFORMER_LAUNCHER=srun MPIFORMER_RUN_NAME=tp sbatch --parsable -N 2 --ntasks-per-node=1 \
  -o "$tmp/tp.out" "$root/slurm/train.sbatch" "$tmp/c.conf" tp=2 max_steps=30)
state=$(wait_state "$id" 120 COMPLETED FAILED CANCELLED TIMEOUT)
loss_gnorm "$tmp/ref_tp/metrics.jsonl" >"$tmp/ref_tp.loss"
loss_gnorm "$tmp/runs/tp/metrics.jsonl" >"$tmp/tp.loss" 2>/dev/null
if [ "$state" = COMPLETED ] && grep -q '"world":2' "$tmp/runs/tp/metrics.jsonl" &&
  [ -s "$tmp/tp.loss" ] && cmp -s "$tmp/tp.loss" "$tmp/ref_tp.loss"; then
  ok "srun job on $(job_field "$id" NodeList): 30 steps, losses and gnorms identical to one host's tp=2"
else
  bad "srun tp=2 job: $state"; tail -10 "$tmp/tp.out"; diff "$tmp/tp.loss" "$tmp/ref_tp.loss" | head -5
fi

cd "$root" || exit 1
echo "stop"
scripts/cluster_local.sh stop "$cdir"
left=$(ip netns list | grep -c "^$(printf 'mpfc%s' "$(printf %s "$cdir" | md5sum | cut -c1-6)")")
if [ "$left" -eq 0 ] && ! alive_any=$(pgrep -f "$cdir/slurm.conf"); then
  ok "stop: no namespace and no daemon of the cluster left"
else bad "after stop: $left namespaces, daemons ${alive_any:-}"; fi
finish
