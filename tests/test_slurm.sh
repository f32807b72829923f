#!/usr/bin/env bash
# test_slurm.sh: slurm/train.sbatch on a real single-node Slurm cluster started here
# (scripts/slurm_local.sh), as root.
#  - a 2-rank job preempted mid-run by `scancel --signal=USR1 --batch` checkpoints, exits 3,
#    is requeued by the script (Restarts=1), resumes and finishes; its per-step losses and
#    its final weights equal an uninterrupted mpirun run's, bit for bit (same layout);
#    metrics.jsonl shows "preempted" and then a resumed "start" at the same step;
#  - MPIFORMER_LAUNCHER=srun runs the same trainer with 2 ranks;
#  - a trainer error fails the job with the trainer's exit status and is not requeued;
#  - the local cluster's node has this machine's CPUs even under OMP_NUM_THREADS=1.
# If the cluster cannot be started (no root, no packages, daemons failing) the test FAILS
# with the reason. The cluster is stopped on every exit path.
set -u
source "$(dirname "$0")/lib.sh"
root=$PWD
case "$BIN" in /*) ;; *) BIN="$root/$BIN" ;; esac
cleanup() {
  scripts/slurm_local.sh stop "$tmp/cluster" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
steps=400
# zero=0 (the default layout: every replica holds all Adam moments; a resumed run must
# give them back to every replica). TEST_SLURM_ZERO=1 checks the sharded case.
zero=${TEST_SLURM_ZERO:-0}

source "$(dirname "$0")/lib_slurm.sh"

[ -x "$BIN" ] || { bad "$BIN not built"; finish; }
$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 --seed 3 >/dev/null ||
  { bad "cannot build the tiny dataset"; finish; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 64" \
  "ffn_dim = 128" "heads = 4" "norm = pre" "dropout = 0.1" "attn_dropout = 0.1" \
  "act_dropout = 0.1" "lr = 3e-3" "warmup_steps = 0" "lr_scheduler = constant" \
  "max_tokens = 160" "log_interval = 1" "eval_interval = 100000" "eval_bleu = 0" "beam = 1" \
  "save_interval = 25" "keep_last = 2" "max_steps = $steps" "zero = $zero" > "$tmp/pre.conf"

echo "uninterrupted reference: mpirun -np 2, $steps steps, zero=$zero"
t0=$SECONDS
timeout 300 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/pre.conf" out="$tmp/ref" >"$tmp/ref.log" 2>&1
rc=$?
echo "    exit $rc in $((SECONDS - t0)) s"
if [ $rc -ne 0 ] || [ ! -s "$tmp/ref/ckpt/ckpt_$(printf %08d $steps).h5" ]; then
  bad "reference run failed (exit $rc)"; tail -5 "$tmp/ref.log"; finish
fi
loss_gnorm "$tmp/ref/metrics.jsonl" > "$tmp/ref.loss"

echo "local Slurm cluster"
# OMP_NUM_THREADS=1 (as many users set it) must not shrink the node: nproc honours it
if out=$(OMP_NUM_THREADS=1 scripts/slurm_local.sh start "$tmp/cluster" 2>&1); then
  ok "slurmctld and slurmd up: $(head -1 <<<"$out")"
else
  bad "cannot start a local Slurm cluster: $out"; finish
fi
cpus=$($PY -c 'import os; print(len(os.sched_getaffinity(0)))')
if grep -q "^NodeName=localhost CPUs=$cpus " "$tmp/cluster/slurm.conf"; then
  ok "slurm.conf: CPUs=$cpus, this machine's CPUs, under OMP_NUM_THREADS=1"
else bad "slurm.conf: $(grep -o 'CPUs=[0-9]*' "$tmp/cluster/slurm.conf"), not $cpus"; fi
export SLURM_CONF="$tmp/cluster/slurm.conf"
mkdir -p "$tmp/submit"
cd "$tmp/submit" || exit 1
export MPIFORMER_BIN="$BIN" MPIFORMER_RUNS="$tmp/runs"

echo "preemption: SIGUSR1 -> checkpoint, exit 3, requeue, resume"
id=$(MPIFORMER_RUN_NAME=pre sbatch --parsable -n 2 -o "$tmp/pre.out" "$root/slurm/train.sbatch" \
  "$tmp/pre.conf" 2>"$tmp/sbatch.err")
if [ -z "$id" ]; then bad "sbatch failed: $(cat "$tmp/sbatch.err")"; finish; fi
m="$tmp/runs/pre/metrics.jsonl"
n=0
for _ in $(seq 480); do # 120 s
  n=$(n_train "$m")
  [ "${n:-0}" -ge 100 ] && [ -s "$tmp/runs/pre/ckpt/latest" ] && break
  case "$(job_field "$id" JobState)" in # wait through RUNNING, PENDING, CONFIGURING, ""
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL) break ;;
  esac
  sleep 0.25
done
if [ "${n:-0}" -ge 100 ] && [ "${n:-0}" -lt $((steps - 50)) ] && [ -s "$tmp/runs/pre/ckpt/latest" ]; then
  ok "job $id running: $n steps done, checkpoint $(cat "$tmp/runs/pre/ckpt/latest")"
else
  bad "job $id did not reach the preemption window (state $(job_field "$id" JobState), $n steps)"
  tail -20 "$tmp/pre.out"; finish
fi
scancel --signal=USR1 --batch "$id"
t0=$SECONDS
restarts=0
for _ in $(seq 240); do # 60 s
  restarts=$(job_field "$id" Restarts)
  [ "${restarts:-0}" -ge 1 ] && break
  sleep 0.25
done
if [ "${restarts:-0}" -eq 1 ]; then ok "requeued (Restarts=1) $((SECONDS - t0)) s after SIGUSR1"
else bad "not requeued: Restarts=${restarts:-?} state $(job_field "$id" JobState)"; fi
state=$(wait_state "$id" 180 COMPLETED FAILED CANCELLED TIMEOUT)
if [ "$state" = COMPLETED ] && [ "$(job_field "$id" ExitCode)" = 0:0 ] && [ "$(job_field "$id" Restarts)" = 1 ]; then
  ok "job finished: COMPLETED, exit 0:0, $SECONDS s into the test"
else
  bad "job ended $state (ExitCode $(job_field "$id" ExitCode), Restarts $(job_field "$id" Restarts))"
  tail -20 "$tmp/pre.out"
fi
for want in "got SIGUSR1" "stop requested by " "requeueing job $id" "(restart 1)" \
  "resumed from" "training finished"; do
  if grep -qF -- "$want" "$tmp/pre.out"; then ok "log: $want"; else bad "log has no '$want'"; fi
done
if $PY -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
ev = [e for e in ev if e["type"] in ("start", "preempted", "end")]
print("    events:", " ".join("%s@%d" % (e["type"], e["step"]) for e in ev))
p = int(sys.argv[2])
assert [e["type"] for e in ev] == ["start", "preempted", "start", "end"], "event order"
s0, pre, s1, end = ev
assert s0["resumed"] == 0 and s1["resumed"] == 1, "resumed flags"
assert 0 < pre["step"] < p and s1["step"] == pre["step"], "preempted step / resume step"
assert end["step"] == p, "end step"' "$m" "$steps"; then ok "metrics: preempted, then resumed at the same step"
else bad "metrics events wrong"; fi
loss_gnorm "$m" > "$tmp/pre.loss"
if cmp -s "$tmp/pre.loss" "$tmp/ref.loss"; then
  ok "per-step loss and gnorm of all $(wc -l <"$tmp/pre.loss") steps identical to the uninterrupted run"
else
  bad "per-step losses differ from the uninterrupted run"
  diff "$tmp/pre.loss" "$tmp/ref.loss" | head -5
fi
final=ckpt/ckpt_$(printf %08d $steps).h5
ckpt_sums "$tmp/ref/$final" > "$tmp/ref.sums" 2>&1
ckpt_sums "$tmp/runs/pre/$final" > "$tmp/pre.sums" 2>&1
if [ -s "$tmp/ref.sums" ] && cmp -s "$tmp/ref.sums" "$tmp/pre.sums"; then
  ok "final weights and Adam moments identical ($(wc -l <"$tmp/ref.sums") dataset checksums)"
else bad "final checkpoints differ"; diff "$tmp/pre.sums" "$tmp/ref.sums" | head -5; fi

echo "MPIFORMER_LAUNCHER=srun (srun --mpi=pmix)"
id=$(MPIFORMER_LAUNCHER=srun MPIFORMER_RUN_NAME=srun sbatch --parsable -n 2 -o "$tmp/srun.out" \
  "$root/slurm/train.sbatch" "$tmp/pre.conf" max_steps=20)
state=$(wait_state "$id" 60 COMPLETED FAILED CANCELLED TIMEOUT)
if [ "$state" = COMPLETED ] && grep -q '"type":"start".*"world":2' "$tmp/runs/srun/metrics.jsonl" &&
  grep -q '"type":"end","step":20,' "$tmp/runs/srun/metrics.jsonl"; then
  ok "srun job completed 20 steps with 2 ranks"
else bad "srun job: $state"; tail -10 "$tmp/srun.out"; fi

echo "a trainer error fails the job, without a requeue"
id=$(MPIFORMER_RUN_NAME=err sbatch --parsable -n 2 -o "$tmp/err.out" "$root/slurm/train.sbatch" \
  "$tmp/pre.conf" lerning_rate=1)
state=$(wait_state "$id" 60 COMPLETED FAILED CANCELLED TIMEOUT)
if [ "$state" = FAILED ] && [ "$(job_field "$id" Restarts)" = 0 ] &&
  [ "$(job_field "$id" ExitCode)" = 1:0 ] && grep -q "unknown key 'lerning_rate'" "$tmp/err.out"; then
  ok "FAILED, ExitCode 1:0, Restarts 0, the message in the job log"
else bad "error job: $state ExitCode $(job_field "$id" ExitCode) Restarts $(job_field "$id" Restarts)"; fi

cd "$root" || exit 1
finish
