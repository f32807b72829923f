#!/usr/bin/env bash
# test_signals.sh: stop signals at every moment of a launch, one writer per run folder,
# ranks that die with their launcher (src/runctl.c, slurm/train.sbatch).
#  - SIGUSR1 to slurm/train.sbatch (run with bash, no Slurm: a stop exits 3) at 0 ms to
#    0.8 s after its start, and under load from CPU burners: every outcome is exit 3 with
#    either "not starting it" (signal before the launch) or a checkpoint of the preempted
#    step named by `latest`; never a rank killed by the signal, never a hang; out/.stop is
#    gone afterwards; a stopped run resumes;
#  - SIGUSR1 straight to mpirun: once every rank catches it (SigCgt), at any delay, exit 3
#    with a checkpoint; before that (mpirun still starting, the documented window) nothing
#    hangs and the outcome is one of the documented ones;
#  - SIGTERM to the script: a checkpoint, mpirun exits 3, the script 0 (no requeue);
#  - a signal between the script's trap and the launch: exit 3, trainer not started;
#  - the watchdog kills a launcher whose ranks ignore the stop (MPIFORMER_STOP_GRACE);
#  - a SIGUSR1 pending when the trainer is exec'd (blocked by its parent) is not lost;
#  - out/.stop alone, written before the launch, stops the run at its first step;
#  - a second trainer on the same run folder is refused, naming the holder, and writes
#    nothing; `kill -9` of mpirun leaves no rank alive 1 s later and no metrics line added;
#    the folder is usable again at once, and plot_run.sh draws the repeated steps once.
set -u
source "$(dirname "$0")/lib.sh"
root=$PWD
case "$BIN" in /*) ;; *) BIN="$root/$BIN" ;; esac
[ -x "$BIN" ] || { bad "$BIN not built"; finish; }
burners=()
cleanup() {
  for b in ${burners[@]+"${burners[@]}"}; do kill "$b" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 \
  --seed 3 >/dev/null || { bad "cannot build the tiny dataset"; finish; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 1" "dec_layers = 1" "d_model = 32" \
  "ffn_dim = 64" "heads = 4" "max_tokens = 160" "log_interval = 1" "eval_interval = 0" \
  "eval_bleu = 0" "save_interval = 0" "max_steps = 60" >"$tmp/t.conf"

# alive PID: a live process (a zombie waiting for init to reap it counts as dead)
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
# step of the "preempted" line of a metrics file, empty if none
preempted() { grep -o '"type":"preempted","step":[0-9]*' "$1" 2>/dev/null | grep -o '[0-9]*$'; }
# check_stop NAME RC LOG RUNDIR: the one allowed outcome of a stop request
check_stop() {
  local name=$1 rc=$2 log=$3 dir=$4 step
  if [ "$rc" -eq 124 ]; then bad "$name: hung (timeout)"; return; fi
  if grep -q "exited on signal\|User defined signal" "$log"; then
    bad "$name: a rank died of the signal"; return
  fi
  if [ -e "$dir/.stop" ]; then bad "$name: $dir/.stop left behind"; return; fi
  step=$(preempted "$dir/metrics.jsonl")
  if [ "$rc" -eq 3 ] && grep -q "before the trainer started: not starting it" "$log" &&
    [ ! -e "$dir/metrics.jsonl" ]; then
    ok "$name: exit 3 before the launch (requeue, warning kept)"
  elif [ "$rc" -eq 3 ] && [ -n "$step" ] && grep -q "stop requested by" "$log" &&
    [ "$(cat "$dir/ckpt/latest" 2>/dev/null)" = "$(printf 'ckpt_%08d.h5' "$step")" ]; then
    ok "$name: checkpoint at step $step, exit 3 ($(grep -o 'stop requested by [^:(]*' "$log"))"
  else
    bad "$name: exit $rc, preempted at '${step}'"; tail -5 "$log"
  fi
}

# caught PID: 1 once the process catches SIGUSR1 (bit 9 of SigCgt in /proc/PID/status)
caught() {
  local mask
  mask=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null)
  [ -n "$mask" ] && (((0x$mask >> 9) & 1))
}
# child_of PARENT NAME: the pid of PARENT's child called NAME, waiting up to 10 s for it
child_of() {
  local c=""
  for _ in $(seq 2000); do
    c=$(pgrep -P "$1" -x "$2" | head -1)
    [ -n "$c" ] && break
    sleep 0.005
  done
  echo "$c"
}

# SIGUSR1 to the batch script, run without Slurm (SLURM_NTASKS ranks, a stop exits 3),
# DELAY seconds after its trap exists (before that, bash's own start-up, it would die)
sbatch_trial() { # NAME DELAY
  local name=$1 d=$2 p rc sh
  MPIFORMER_BIN=$BIN MPIFORMER_RUNS=$tmp/runs MPIFORMER_RUN_NAME=$name SLURM_NTASKS=2 \
    MPIFORMER_MPIRUN_ARGS=--oversubscribe MPIFORMER_STOP_GRACE=40 \
    timeout 60 bash slurm/train.sbatch "$tmp/t.conf" max_steps=400 >"$tmp/$name.log" 2>&1 &
  p=$!
  sh=$(child_of "$p" bash)
  for _ in $(seq 2000); do caught "$sh" && break; sleep 0.001; done
  sleep "$d"
  kill -USR1 "$sh"
  wait "$p"
  rc=$?
  check_stop "train.sbatch, SIGUSR1 after ${d}s" "$rc" "$tmp/$name.log" "$tmp/runs/$name"
}
echo "SIGUSR1 to slurm/train.sbatch"
for d in 0 0.01 0.03 0.06 0.1 0.2 0.4 0.8; do sbatch_trial "s$d" "$d"; done
echo "the same under load (2 CPU burners)"
for _ in 1 2; do
  $PY -c 'while True: pass' &
  burners+=($!)
done
for d in 0.05 0.15 0.3; do sbatch_trial "l$d" "$d"; done
for b in "${burners[@]}"; do kill "$b" 2>/dev/null; done
burners=()

echo "SIGTERM to slurm/train.sbatch: passed on as SIGUSR1, checkpoint, no requeue"
MPIFORMER_BIN=$BIN MPIFORMER_RUNS=$tmp/runs MPIFORMER_RUN_NAME=term SLURM_NTASKS=2 \
  MPIFORMER_MPIRUN_ARGS=--oversubscribe timeout 60 bash slurm/train.sbatch "$tmp/t.conf" \
  max_steps=400 >"$tmp/term.log" 2>&1 &
p=$!
sh=$(child_of "$p" bash)
sleep 1
kill -TERM "$sh"
wait "$p"
rc=$?
step=$(preempted "$tmp/runs/term/metrics.jsonl")
if [ "$rc" -eq 0 ] && [ -n "$step" ] && grep -q "stopped by SIGTERM (exit 3): not requeueing" \
  "$tmp/term.log" && [ "$(cat "$tmp/runs/term/ckpt/latest")" = "$(printf 'ckpt_%08d.h5' "$step")" ]
then ok "SIGTERM: checkpoint at step $step, mpirun exit 3, script exit 0 (Slurm decides)"
else bad "SIGTERM: script exit $rc, preempted at '$step'"; tail -3 "$tmp/term.log"; fi

echo "SIGUSR1 between the script's trap and the launch (a copy with a 2 s pause there)"
sed 's|^started=1$|sleep 2; started=1|' slurm/train.sbatch >"$tmp/slow.sbatch"
MPIFORMER_BIN=$BIN MPIFORMER_RUNS=$tmp/runs MPIFORMER_RUN_NAME=early SLURM_NTASKS=2 \
  timeout 60 bash "$tmp/slow.sbatch" "$tmp/t.conf" >"$tmp/early.log" 2>&1 &
p=$!
sleep 1
kill -USR1 "$(child_of "$p" bash)"
wait "$p"
rc=$?
if grep -q "sleep 2; started=1" "$tmp/slow.sbatch"; then
  check_stop "train.sbatch, SIGUSR1 before the launch" "$rc" "$tmp/early.log" "$tmp/runs/early"
else bad "cannot make the paused copy of train.sbatch"; fi

echo "the watchdog: a launcher still running MPIFORMER_STOP_GRACE s after a stop is killed"
# ranks that ignore the request: `sleep` with SIGUSR1 and SIGTERM ignored
printf '%s\n' '#!/bin/bash' "trap '' USR1 TERM" 'exec sleep 60' >"$tmp/deaf"
chmod +x "$tmp/deaf"
t0=$SECONDS
MPIFORMER_BIN=$tmp/deaf MPIFORMER_RUNS=$tmp/runs MPIFORMER_RUN_NAME=deaf SLURM_NTASKS=2 \
  MPIFORMER_MPIRUN_ARGS=--oversubscribe MPIFORMER_STOP_GRACE=3 \
  timeout 60 bash slurm/train.sbatch "$tmp/t.conf" >"$tmp/deaf.log" 2>&1 &
p=$!
sh=$(child_of "$p" bash)
mp=$(child_of "$sh" mpirun)
deaf=""
for _ in $(seq 1000); do
  deaf=$(pgrep -P "$mp" -x sleep)
  [ "$(wc -w <<<"$deaf")" -eq 2 ] && break
  sleep 0.01
done
kill -USR1 "$sh"
wait "$p"
rc=$?
for r in $deaf; do kill -KILL "$r" 2>/dev/null; done # orphaned when mpirun was killed
if [ "$rc" -eq 3 ] && [ $((SECONDS - t0)) -lt 20 ] &&
  grep -q "mpirun still running [0-9]* s after the stop request: killing it" "$tmp/deaf.log"; then
  ok "killed $((SECONDS - t0)) s after the stop; exit 3 (requeue)"
else bad "watchdog: exit $rc after $((SECONDS - t0)) s"; tail -3 "$tmp/deaf.log"; fi

echo "a stopped run resumes"
step=$(preempted "$tmp/runs/s0.01/metrics.jsonl")
if run 2 train "$tmp/t.conf" out="$tmp/runs/s0.01" max_steps=$((${step:-0} + 2)) \
  >"$tmp/resume.log" 2>&1 && grep -q "resumed from .* at step ${step:-x} " "$tmp/resume.log" &&
  grep -q "\"type\":\"end\",\"step\":$((${step:-0} + 2))," "$tmp/runs/s0.01/metrics.jsonl"; then
  ok "resumed at step $step and trained 2 more steps"
else bad "resume after the stop failed"; tail -5 "$tmp/resume.log"; fi

echo "SIGUSR1 straight to mpirun"
# mpi_trial NAME DELAY [ready]: with "ready", DELAY counts from the moment every rank's
# /proc status shows SIGUSR1 caught
mpi_trial() {
  local name=$1 d=$2 ready=${3:-} p rc n mp
  timeout 60 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/t.conf" out="$tmp/runs/$name" \
    >"$tmp/$name.log" 2>&1 &
  p=$!
  mp=$(child_of "$p" mpirun)
  if [ -n "$ready" ]; then
    for _ in $(seq 2000); do
      n=0
      for r in $(pgrep -P "$mp" -x mpiformer); do caught "$r" && n=$((n + 1)); done
      [ "$n" -eq 2 ] && break
      sleep 0.005
    done
  fi
  sleep "$d"
  kill -USR1 "$mp"
  wait "$p"
  rc=$?
  if [ -n "$ready" ]; then
    check_stop "mpirun, SIGUSR1 ${d}s after the ranks caught it" "$rc" "$tmp/$name.log" \
      "$tmp/runs/$name"
  elif [ "$rc" -eq 124 ]; then bad "mpirun, SIGUSR1 after ${d}s: hung"
  elif [ "$rc" -eq 3 ] && [ -n "$(preempted "$tmp/runs/$name/metrics.jsonl")" ]; then
    ok "mpirun, SIGUSR1 after ${d}s: checkpoint, exit 3"
  elif [ "$rc" -eq 0 ] && grep -q '"type":"end","step":60,' "$tmp/runs/$name/metrics.jsonl"; then
    ok "mpirun, SIGUSR1 after ${d}s: came before the ranks existed, dropped by mpirun (documented)"
  elif [ "$rc" -eq 138 ]; then
    ok "mpirun, SIGUSR1 after ${d}s: exit 138 inside the documented start-up window, no hang"
  else bad "mpirun, SIGUSR1 after ${d}s: exit $rc"; tail -5 "$tmp/$name.log"; fi
}
for d in 0 0.1 0.3; do mpi_trial "m$d" "$d"; done
for d in 0 0.01 0.05 0.2; do mpi_trial "r$d" "$d" ready; done

echo "out/.stop alone (no signal) stops a run"
mkdir -p "$tmp/runs/file"
echo "by hand" >"$tmp/runs/file/.stop"
run 2 train "$tmp/t.conf" out="$tmp/runs/file" >"$tmp/file.log" 2>&1
rc=$?
if grep -qF "stop requested by $tmp/runs/file/.stop (by hand)" "$tmp/file.log"; then
  check_stop "out/.stop written before the launch" "$rc" "$tmp/file.log" "$tmp/runs/file"
else bad "out/.stop ignored (exit $rc)"; tail -3 "$tmp/file.log"; fi

echo "a SIGUSR1 pending at exec (blocked by the parent) is taken"
$PY -c '
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
os.kill(os.getpid(), signal.SIGUSR1)
os.execv(sys.argv[1], sys.argv[1:])' "$BIN" train "$tmp/t.conf" out="$tmp/runs/pending" \
  >"$tmp/pending.log" 2>&1
check_stop "SIGUSR1 pending at exec" $? "$tmp/pending.log" "$tmp/runs/pending"

echo "one writer per run folder; ranks die with mpirun"
k=$tmp/runs/k9
timeout 120 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/t.conf" out="$k" max_steps=100000 \
  save_interval=10 >"$tmp/k9.log" 2>&1 &
p=$!
for _ in $(seq 600); do
  n=$(grep -c '"type":"train"' "$k/metrics.jsonl" 2>/dev/null)
  [ "${n:-0}" -ge 25 ] && break
  sleep 0.05
done
n0=$(wc -l <"$k/metrics.jsonl")
run 2 train "$tmp/t.conf" out="$k" max_steps=100000 >"$tmp/second.log" 2>&1
rc=$?
holder=$(grep -o 'pid=[0-9]*' "$k/.lock")
want="error: run folder $k is in use by another trainer (host=$(hostname) $holder"
if [ $rc -eq 1 ] && grep -qF "$want" "$tmp/second.log" &&
  [ "$(grep -c '"type":"start"' "$k/metrics.jsonl")" -eq 1 ]; then
  ok "second trainer refused: $(grep -o 'in use by another trainer ([^)]*)' "$tmp/second.log")"
else bad "second trainer not refused (exit $rc)"; cat "$tmp/second.log"; fi
[ "$(wc -l <"$k/metrics.jsonl")" -ge "$n0" ] || bad "metrics shrank"
mp=$(pgrep -P "$p" -x mpirun)
ranks=$(pgrep -P "$mp" -x mpiformer)
kill -9 "$mp"
sleep 1
n1=$(wc -l <"$k/metrics.jsonl")
left=""
for r in $ranks; do alive "$r" && left="$left $r"; done
sleep 1
n2=$(wc -l <"$k/metrics.jsonl")
if [ -n "$ranks" ] && [ -z "$left" ] && [ "$n1" -eq "$n2" ]; then
  ok "kill -9 mpirun: its $(wc -w <<<"$ranks") ranks gone within 1 s, no metrics line after"
else bad "kill -9 mpirun: ranks left:${left:- none}, metrics lines $n1 -> $n2"; fi
wait "$p" 2>/dev/null
last=$(grep -o '"type":"train","step":[0-9]*' "$k/metrics.jsonl" | tail -1 | grep -o '[0-9]*$')
# from the second newest checkpoint: the steps after it are trained again, for plot_run
older=$(ls "$k/ckpt" | grep '^ckpt_.*h5$' | sort | tail -2 | head -1)
if run 2 train "$tmp/t.conf" out="$k" save_interval=10 max_steps=$((last + 3)) \
  resume="$k/ckpt/$older" >"$tmp/relaunch.log" 2>&1 &&
  grep -q "resumed from" "$tmp/relaunch.log"; then
  ok "relaunch into the folder at once: resumed from $older, trained to step $((last + 3))"
else bad "relaunch after kill -9 failed"; tail -5 "$tmp/relaunch.log"; fi
mkdir -p "$tmp/plot"
if PLOT_RUN_KEEP="$tmp/plot" scripts/plot_run.sh "$k" >/dev/null 2>&1 && $PY -c '
import json, sys
rows = [l.split() for l in open(sys.argv[1])]
steps = [int(r[1]) for r in rows]
assert steps == sorted(set(steps)), "steps repeated or out of order"
newest = {}
for l in open(sys.argv[2]):
    o = json.loads(l)
    if o["type"] == "train": newest[o["step"]] = o["loss"]
assert steps == sorted(newest), "steps missing"
assert all(float(r[2]) == newest[int(r[1])] for r in rows), "not the newest copy"
n = sum(1 for l in open(sys.argv[2]) if "\"type\":\"train\"" in l)
assert n > len(steps), "no repeated steps to test with"
print("    %d train lines, %d steps drawn" % (n, len(steps)))' \
  "$tmp/plot/train.dat" "$k/metrics.jsonl"
then ok "plot_run.sh draws each step once, the newest line"
else bad "plot_run.sh repeats steps"; fi

finish
