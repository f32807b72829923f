#!/usr/bin/env bash
# test_io_faults.sh: a write that fails (disk full, read-only folder) stops the run on every
# rank within seconds, with one message that names the file and the system's reason.
#  (a) out= on a small tmpfs, save_interval=1: the first or the third save finds the disk
#      full (1, 2 and 3 ranks, pp=2, tp=2). Each run must exit non-zero within 60 s (a hang
#      is a failure), print one "mpiformer: error:" line naming ckpt_<step>.h5.tmp and "No
#      space left on device" and no abort (no "[rank R] file:line" CHECK, no MPI_ABORT
#      banner), leave no .tmp, and keep `latest` naming the last good checkpoint (none for
#      the first save). After the tmpfs is enlarged (remount), resume=auto continues from
#      that checkpoint (or starts fresh) and finishes.
#  (b) metrics.jsonl a link to /dev/full (every write: ENOSPC): one line naming the file
#      and the reason, exit non-zero, on 2 ranks.
#  (b2) metrics.jsonl on a 4 KiB tmpfs that fills mid-run, a save due every step: exit 1,
#      one message, and no checkpoint of the step whose log line failed.
#  (c) out= a read-only tmpfs, and a folder to create inside one: one line with "Read-only
#      file system", exit 1, no abort, on 2 ranks.
#  (d) a batch read that fails mid-run on the last rank (MPIFORMER_TEST_READ_FAIL=N, an
#      EIO in the N-th token read, src/data.c) on 2 ranks (dp, pp, tp) and on 3: every rank
#      stops at that update with exit 1 within 60 s, rank 0 prints one line naming the file,
#      the tokens dataset and "Input/output error", no abort, no update is logged or saved
#      from that step, and `latest` keeps the checkpoint before it.
# Needs root for mount (CI runs as root): without it the test fails, it does not skip.
set -u
source "$(dirname "$0")/lib.sh"
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$BIN" ] || { bad "$BIN not built"; finish; }
$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 \
  --seed 3 >/dev/null || { bad "cannot build the tiny dataset"; finish; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 32" \
  "ffn_dim = 128" "heads = 4" "norm = pre" "dropout = 0.1" "lr = 1e-3" "warmup_steps = 0" \
  "lr_scheduler = constant" "max_tokens = 160" "log_interval = 1" "eval_interval = 100000" \
  "eval_bleu = 0" "beam = 1" "save_interval = 1" "keep_last = 0" "max_steps = 6" \
  >"$tmp/t.conf"

# a mount point under $tmp, mounted with OPTS (fails the test loudly when mount is refused)
mount_tmpfs() { # dir opts
  mkdir -p "$1"
  if ! mount -t tmpfs -o "$2" tmpfs "$1" 2>"$tmp/mount.err"; then
    bad "mount -t tmpfs -o $2 refused ($(cat "$tmp/mount.err")): this test needs root"
    finish
  fi
  mounts+=("$1")
}

# the size of one checkpoint of this model (the same file for every layout)
run 1 train "$tmp/t.conf" out="$tmp/sz" max_steps=1 >"$tmp/sz.log" 2>&1 ||
  { bad "the sizing run failed"; tail -5 "$tmp/sz.log"; finish; }
ck_kb=$(($(stat -c %s "$tmp/sz/ckpt/ckpt_00000001.h5") / 1024))
echo "one checkpoint: $ck_kb KiB"

# one message, no abort: the common checks of a failed run's log
one_clean_error() { # log what
  local n
  n=$(grep -c '^mpiformer: error:' "$1")
  [ "$n" -eq 1 ] && ok "$2: one error line" || bad "$2: $n error lines"
  if grep -qE '^\[rank [0-9]+\] |MPI_ABORT|MPI_Abort' "$1"; then
    bad "$2: an abort instead of a clean exit"; grep -E '^\[rank|MPI_A' "$1" | head -3
  else
    ok "$2: no abort"
  fi
}

echo "(a) disk full during a checkpoint"
case_full() { # name np fail_at args...
  local name=$1 np=$2 at=$3; shift 3
  local m="$tmp/mnt_$name" good
  good=$((at - 1))
  # room for the good checkpoints and half of the next one (plus the log and config)
  mount_tmpfs "$m" "size=$((good * ck_kb + ck_kb / 2 + 64))k"
  local out="$m/run" t0=$SECONDS rc=0
  timeout 60 mpirun --oversubscribe -np "$np" "$BIN" train "$tmp/t.conf" out="$out" "$@" \
    >"$tmp/$name.log" 2>&1 || rc=$?
  local secs=$((SECONDS - t0))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    bad "$name: hung (killed after 60 s)"; tail -3 "$tmp/$name.log"; return
  fi
  [ "$rc" -ne 0 ] && ok "$name: exit $rc after ${secs}s" || bad "$name: exit 0 on a full disk"
  local tmpname
  tmpname=$(printf 'ckpt_%08d.h5.tmp' "$at")
  if grep '^mpiformer: error:' "$tmp/$name.log" | grep -F "$tmpname" |
    grep -q 'No space left on device'; then
    ok "$name: the message names $tmpname and 'No space left on device'"
  else
    bad "$name: message"; grep -v '^step\|^per rank\|^mpiformer train' "$tmp/$name.log" | head -4
  fi
  one_clean_error "$tmp/$name.log" "$name"
  compgen -G "$out/ckpt/*.tmp" >/dev/null && bad "$name: a .tmp is left: $(ls "$out/ckpt")" ||
    ok "$name: no .tmp left"
  local want=""
  [ "$good" -gt 0 ] && want=$(printf 'ckpt_%08d.h5' "$good")
  local have
  have=$(cat "$out/ckpt/latest" 2>/dev/null)
  [ "$have" = "$want" ] && ok "$name: latest names '${want:-nothing}'" ||
    bad "$name: latest names '$have', expected '$want'"
  # more room, and resume=auto picks up the last good checkpoint
  mount -o remount,size=$(((good + 4) * ck_kb + 512))k "$m" ||
    { bad "$name: remount refused"; return; }
  rc=0
  timeout 120 mpirun --oversubscribe -np "$np" "$BIN" train "$tmp/t.conf" out="$out" \
    max_steps=$((good + 2)) "$@" >"$tmp/$name.resume.log" 2>&1 || rc=$?
  if [ "$good" -gt 0 ]; then
    grep -q "^resumed from $out/ckpt/$want at step $good " "$tmp/$name.resume.log" &&
      ok "$name: resume=auto continued from $want" || bad "$name: resume did not use $want"
  else
    grep -q '^resumed from' "$tmp/$name.resume.log" && bad "$name: resumed from nothing?" ||
      ok "$name: resume=auto started fresh"
  fi
  [ "$rc" -eq 0 ] && [ "$(cat "$out/ckpt/latest")" = "$(printf 'ckpt_%08d.h5' $((good + 2)))" ] &&
    ok "$name: the resumed run finished" ||
    { bad "$name: the resumed run: exit $rc"; tail -3 "$tmp/$name.resume.log"; }
}
case_full np1_first 1 1
case_full np1_third 1 3
case_full np2_first 2 1 zero=1
case_full np2_third 2 3 zero=1
case_full np3_third 3 3 zero=1
case_full pp2_third 2 3 pp=2 microbatches=2
case_full tp2_first 2 1 tp=2
case_full tp2_third 2 3 tp=2

echo "(b) metrics.jsonl cannot be written (ENOSPC)"
mkdir -p "$tmp/full"
ln -s /dev/full "$tmp/full/metrics.jsonl"
rc=0
timeout 60 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/t.conf" out="$tmp/full" \
  >"$tmp/full.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && ok "metrics: exit $rc" || bad "metrics: exit $rc"
grep -q "^mpiformer: error: $tmp/full/metrics.jsonl: .*No space left on device" "$tmp/full.log" &&
  ok "metrics: the message names the file and the reason" ||
  { bad "metrics: message"; head -5 "$tmp/full.log"; }
one_clean_error "$tmp/full.log" "metrics"
compgen -G "$tmp/full/ckpt/ckpt_*.h5" >/dev/null && bad "metrics: trained on after the failure" ||
  ok "metrics: stopped before any checkpoint"

echo "(b2) metrics.jsonl fills up mid-run (a 4 KiB tmpfs) with a save due every step"
mount_tmpfs "$tmp/mfull" "size=4k"
mkdir -p "$tmp/mid"
ln -s "$tmp/mfull/metrics.jsonl" "$tmp/mid/metrics.jsonl"
rc=0
timeout 60 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/t.conf" out="$tmp/mid" max_steps=40 \
  >"$tmp/mid.log" 2>&1 || rc=$?
[ "$rc" -eq 1 ] && ok "metrics mid-run: exit 1" || bad "metrics mid-run: exit $rc"
one_clean_error "$tmp/mid.log" "metrics mid-run"
# the failed step: the last one rank 0 printed (its stdout line follows the metrics write)
failed_step=$(sed -n 's/^step *\([0-9][0-9]*\) |.*/\1/p' "$tmp/mid.log" | tail -1)
newest=$(cat "$tmp/mid/ckpt/latest" 2>/dev/null)
nstep=$(echo "$newest" | sed -n 's/^ckpt_0*\([0-9][0-9]*\)\.h5$/\1/p')
echo "    the metrics line of step $failed_step failed; latest: $newest"
[ -n "$failed_step" ] && [ "$failed_step" -lt 40 ] && [ -n "$nstep" ] &&
  [ "$nstep" -lt "$failed_step" ] && [ ! -e "$tmp/mid/ckpt/ckpt_$(printf %08d "$failed_step").h5" ] &&
  ok "metrics mid-run: stopped at that step, saved nothing for it" ||
  bad "metrics mid-run: failed at step $failed_step, latest $newest"

echo "(c) a read-only run folder"
mount_tmpfs "$tmp/ro" "size=1m,ro"
for out in "$tmp/ro" "$tmp/ro/sub"; do
  rc=0
  timeout 60 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/t.conf" out="$out" \
    >"$tmp/ro.log" 2>&1 || rc=$?
  [ "$rc" -eq 1 ] && ok "out=$out: exit 1" || bad "out=$out: exit $rc"
  grep -q "^mpiformer: error: .*$out.*: Read-only file system" "$tmp/ro.log" &&
    ok "out=$out: the message names the folder and 'Read-only file system'" ||
    { bad "out=$out: message"; head -3 "$tmp/ro.log"; }
  one_clean_error "$tmp/ro.log" "out=$out"
done
echo "(d) a batch read fails mid-run (EIO on the last rank)"
for lay in "2 dp" "2 pp=2" "2 tp=2" "3 dp"; do
  set -- $lay
  np=$1 extra=$2; [ "$extra" = dp ] && extra=""
  name="read_${np}_${extra:-dp}"
  rc=0
  # the 7th side read of the last rank: past the checkpoint of step 2 on every layout
  MPIFORMER_TEST_READ_FAIL=7 timeout 60 mpirun --oversubscribe -np "$np" "$BIN" train \
    "$tmp/t.conf" out="$tmp/$name" save_interval=2 $extra >"$tmp/$name.log" 2>&1 || rc=$?
  [ "$rc" -eq 1 ] && ok "$name: exit 1" || bad "$name: exit $rc"
  grep -qE "^mpiformer: error: $tmp/tiny.h5: reading /train/(src|tgt)/tokens .*Input/output error" \
    "$tmp/$name.log" && ok "$name: the message names the file, the tokens and the reason" ||
    { bad "$name: message"; head -5 "$tmp/$name.log"; }
  one_clean_error "$tmp/$name.log" "$name"
  last=$($PY -c '
import json, sys
s = [json.loads(l)["step"] for l in open(sys.argv[1]) if json.loads(l)["type"] == "train"]
print(s[-1] if s else 0)' "$tmp/$name/metrics.jsonl")
  latest=$(cat "$tmp/$name/ckpt/latest" 2>/dev/null)
  step_failed=$((last + 1))
  [ "$last" -ge 2 ] && [ "$last" -lt 6 ] && ok "$name: stopped after step $last (of 6)" ||
    bad "$name: last logged step $last"
  [ ! -e "$tmp/$name/ckpt/ckpt_0000000$step_failed.h5" ] &&
    ok "$name: nothing saved from the failed step" || bad "$name: a checkpoint of step $step_failed"
  [ -n "$latest" ] && [ -e "$tmp/$name/ckpt/$latest" ] && ok "$name: latest is $latest" ||
    bad "$name: latest '$latest'"
done
finish
