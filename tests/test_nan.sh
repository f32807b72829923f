#!/usr/bin/env bash
# test_nan.sh: a non-finite loss or gradient is a result, not a crash (2 ranks, and pp=2).
# The NaN comes from MPIFORMER_TEST_NAN=N (src/train.c): the last rank's loss sum of step
# N becomes NaN before the sums are all-reduced, as an overflow on one rank would; the
# detection, the agreement of the ranks and what follows are the real code paths.
#  - nan_policy=stop: after a good run saved a checkpoint, a resumed run whose step 6 is
#    NaN exits 0 printing "diverged at step 6"; metrics.jsonl ends with a "nonfinite" and
#    a "diverged" line of step 6; no checkpoint is written for it: the one saved before
#    (same file, same bytes) stays `latest` and still evaluates to a finite loss;
#  - the same with pp=2 (the loss lives on the last stage only): every rank stops, no hang;
#  - nan_policy=skip: one NaN step (step 3) is skipped and training goes on to the end with
#    the same number of updates; with NaN at every step from 3 on and max_skips=3, three
#    steps are skipped and the fourth ends the run as diverged at step 3;
#  - scripts/report.py shows the run as "at step 6" in its diverged column.
set -u
source "$(dirname "$0")/lib.sh"

$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 200 --valid 10 --test 10 --seed 1 >/dev/null ||
  { echo "cannot build the tiny dataset"; echo "0 passed, 1 failed"; exit 1; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 1" "dec_layers = 1" "d_model = 32" \
  "ffn_dim = 64" "heads = 4" "max_tokens = 128" "log_interval = 1" "eval_interval = 1000" \
  "eval_bleu = 0" "save_interval = 2" "keep_last = 1" "warmup_steps = 0" "lr = 1e-3" > "$tmp/n.conf"

# last_type METRICS: "type step" of the last line
last_type() { $PY -c 'import json,sys; o=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(o["type"], o.get("step"))' "$1"; }

echo "a good run of 4 steps, then the same run resumed with a NaN at step 6"
run 2 train "$tmp/n.conf" out="$tmp/r" max_steps=4 >"$tmp/good.log" 2>&1 || bad "the good run failed"
before=$(cat "$tmp/r/ckpt/latest")
sum_before=$(md5sum < "$tmp/r/ckpt/$before")
MPIFORMER_TEST_NAN=6 run 2 train "$tmp/n.conf" out="$tmp/r" max_steps=20 resume=auto >"$tmp/stop.log" 2>&1
rc=$?
if [ "$rc" = 0 ]; then ok "nan_policy=stop: exit 0"; else bad "nan_policy=stop: exit $rc"; tail -3 "$tmp/stop.log"; fi
if grep -q "^diverged at step 6: the loss or the gradient is not finite" "$tmp/stop.log"; then
  ok "prints 'diverged at step 6: the loss or the gradient is not finite'"
else bad "no 'diverged at step 6' line"; tail -3 "$tmp/stop.log"; fi
if [ "$(last_type "$tmp/r/metrics.jsonl")" = "diverged 6" ] &&
   grep -q '"type":"nonfinite","step":6' "$tmp/r/metrics.jsonl"; then
  ok "metrics.jsonl ends with nonfinite and diverged lines of step 6"
else bad "metrics.jsonl does not end with diverged at step 6: $(tail -n 2 "$tmp/r/metrics.jsonl")"; fi
after=$(cat "$tmp/r/ckpt/latest")
if [ "$after" = "$before" ] && [ "$(md5sum < "$tmp/r/ckpt/$after")" = "$sum_before" ] &&
   [ "$(ls "$tmp/r/ckpt" | grep -c '^ckpt_.*\.h5$')" = 1 ]; then
  ok "no checkpoint written for the diverged run: latest is still $before, unchanged"
else bad "the checkpoints changed: latest $before -> $after ($(ls "$tmp/r/ckpt" | tr '\n' ' '))"; fi
if run 2 eval "$tmp/n.conf" out="$tmp/r" ckpt="$tmp/r/ckpt" 2>/dev/null | grep '^{' |
   $PY -c 'import json,math,sys; o=json.loads(sys.stdin.read()); sys.exit(0 if math.isfinite(o["loss"]) else 1)'; then
  ok "the kept checkpoint evaluates to a finite loss"
else bad "the kept checkpoint does not evaluate"; fi

echo "pp=2: the NaN is seen by the last stage's rank only"
MPIFORMER_TEST_NAN=3 run 2 train "$tmp/n.conf" out="$tmp/p" pp=2 max_steps=10 save_interval=0 \
  >"$tmp/pp.log" 2>&1
rc=$?
if [ "$rc" = 0 ] && [ "$(last_type "$tmp/p/metrics.jsonl")" = "diverged 3" ]; then
  ok "pp=2: both stages stop at step 3, exit 0"
else bad "pp=2: rc $rc, last line $(last_type "$tmp/p/metrics.jsonl")"; tail -3 "$tmp/pp.log"; fi

echo "nan_policy=skip"
MPIFORMER_TEST_NAN=3 run 2 train "$tmp/n.conf" out="$tmp/s1" max_steps=8 nan_policy=skip \
  save_interval=0 >"$tmp/skip1.log" 2>&1
rc=$?
if [ "$rc" = 0 ] && [ "$(grep -c "update skipped" "$tmp/skip1.log")" = 1 ] &&
   [ "$(last_type "$tmp/s1/metrics.jsonl")" = "end 8" ]; then
  ok "one NaN step skipped, the run goes on to step 8"
else bad "skip once: rc $rc, last line $(last_type "$tmp/s1/metrics.jsonl")"; tail -3 "$tmp/skip1.log"; fi
MPIFORMER_TEST_NAN=3+ run 2 train "$tmp/n.conf" out="$tmp/s" max_steps=20 nan_policy=skip \
  max_skips=3 save_interval=0 >"$tmp/skip.log" 2>&1
rc=$?
skips=$(grep -c "non-finite loss or gradient, update skipped" "$tmp/skip.log")
nonfinite=$(grep -c '"type":"nonfinite"' "$tmp/s/metrics.jsonl")
if [ "$rc" = 0 ] && [ "$skips" = 3 ] && [ "$nonfinite" = 4 ] &&
   [ "$(last_type "$tmp/s/metrics.jsonl")" = "diverged 3" ]; then
  ok "max_skips=3: 3 updates skipped, the 4th non-finite step ends it as diverged at step 3"
else bad "skip: rc $rc, $skips skipped, $nonfinite nonfinite lines, last $(last_type "$tmp/s/metrics.jsonl")"; fi

echo "the report names the divergence"
mkdir -p "$tmp/rep/study" && cp -r "$tmp/r" "$tmp/rep/study/nanrun"
if $PY scripts/report.py --runs "$tmp/rep" --summary 2>&1 | grep '^| nanrun ' | grep -q 'at step 6 |'; then
  ok "report.py: 'at step 6' in the diverged column"
else bad "report.py does not show the divergence"; $PY scripts/report.py --runs "$tmp/rep" --summary | tail -3; fi

finish
