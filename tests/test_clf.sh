#!/usr/bin/env bash
# test_clf.sh: end-to-end runs of the encoder-only tasks on tiny generated datasets.
#  - arch=encoder_classifier on a pair task (is b a copy of a?) reaches a validation
#    accuracy well above chance (0.5), and eval split=test prints it as JSON;
#  - 2 data-parallel ranks give the same per-step losses as 1 rank with update_freq=2
#    (dropout on: the masks do not depend on the layout);
#  - arch=encoder_mlm: the masked-LM loss falls, and a run stopped and resumed gives the
#    same losses bit for bit (the masks derive from seed, step and batch);
#  - init_from=MLM checkpoint loads the encoder tensors (equal values after an lr=0 step)
#    and leaves the head fresh; a checkpoint of another width is refused by name;
#  - a classifier on a translation dataset is refused with a clear message.
set -u
source "$(dirname "$0")/lib.sh"
last_valid() { # field of the last valid line
  $PY -c '
import json, sys
v = [json.loads(l) for l in open(sys.argv[1])]
v = [o for o in v if o["type"] == "valid"]
print(v[-1][sys.argv[2]] if v else -1)' "$1" "$2"
}

$PY tests/make_tiny_dataset.py "$tmp/pairs.h5" --pairs --vocab 40 --train 3000 --valid 200 \
  --test 200 --seed 3 --max-len 8 >/dev/null &&
  $PY tests/make_tiny_dataset.py "$tmp/runs.h5" --pairs --runs --vocab 40 --train 1000 \
    --valid 100 --test 10 --seed 4 --max-len 10 >/dev/null &&
  $PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 50 --valid 8 --test 8 >/dev/null ||
  { echo "cannot build the tiny datasets"; echo "0 passed, 1 failed"; exit 1; }
common=("data = $tmp/pairs.h5" "enc_layers = 2" "d_model = 32" "ffn_dim = 64" "heads = 4"
  "lr = 2e-3" "warmup_steps = 0" "lr_scheduler = constant" "log_interval = 1" "eval_bleu = 0")
printf '%s\n' "${common[@]}" "arch = encoder_classifier" "norm = pre" "dropout = 0.1" \
  "max_tokens = 500" "eval_interval = 150" >"$tmp/clf.conf"
printf '%s\n' "${common[@]}" "data = $tmp/runs.h5" "arch = encoder_mlm" "norm = post" "dropout = 0.1" \
  "attn_dropout = 0.1" "max_tokens = 400" "eval_interval = 1000" >"$tmp/mlm.conf"

echo "classifier: accuracy rises well above chance (1 rank, 300 steps)"
run 1 train "$tmp/clf.conf" out="$tmp/clf" max_steps=300 >"$tmp/clf.log" 2>&1
acc=$(last_valid "$tmp/clf/metrics.jsonl" accuracy)
grep "^valid" "$tmp/clf.log" | sed 's/^/    /'
if awk -v a="$acc" 'BEGIN {exit !(a >= 0.8)}'; then ok "valid accuracy $acc >= 0.8 (chance 0.5)"
else bad "valid accuracy $acc < 0.8"; tail -3 "$tmp/clf.log"; fi
run 1 eval "$tmp/clf.conf" out="$tmp/clf" ckpt="$tmp/clf/ckpt" split=test >"$tmp/eval.out" 2>"$tmp/eval.err"
if $PY -c '
import json, sys
o = json.loads(open(sys.argv[1]).read())
assert o["split"] == "test" and o["sentences"] == 200 and o["tokens"] == 200, o
assert 0.7 <= o["accuracy"] <= 1 and o["correct"] == round(o["accuracy"] * 200) and "bleu" not in o, o
print("    ", {k: o[k] for k in ("loss", "accuracy", "correct")})' "$tmp/eval.out"; then ok "eval split=test JSON with accuracy"
else bad "eval JSON"; cat "$tmp/eval.out" "$tmp/eval.err"; fi

echo "classifier: 2 ranks = 1 rank with update_freq=2 (dropout on)"
run 1 train "$tmp/clf.conf" out="$tmp/dp1" max_steps=10 update_freq=2 >"$tmp/dp1.log" 2>&1
run 2 train "$tmp/clf.conf" out="$tmp/dp2" max_steps=10 >"$tmp/dp2.log" 2>&1
losses "$tmp/dp1/metrics.jsonl" >"$tmp/dp1.loss"
losses "$tmp/dp2/metrics.jsonl" >"$tmp/dp2.loss"
if same "$tmp/dp2.loss" "$tmp/dp1.loss" 2e-5; then ok "dp=2 equals dp=1 x update_freq=2"
else bad "dp=2 differs from dp=1"; fi

echo "masked-LM: the loss falls below what no context allows (1 rank, 150 steps)"
run 1 train "$tmp/mlm.conf" out="$tmp/mlm" max_steps=150 >"$tmp/mlm.log" 2>&1
losses "$tmp/mlm/metrics.jsonl" >"$tmp/mlm.loss"
first=$(head -10 "$tmp/mlm.loss" | awk '{s+=$2} END {print s/NR}')
last=$(tail -10 "$tmp/mlm.loss" | awk '{s+=$2} END {print s/NR}')
echo "    mean loss of the first 10 steps $first, of the last 10 $last (uniform: ln 36 = 3.58)"
# without context the best is the uniform word distribution (the runs start anywhere)
if awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.8 * a && b < log(36) - 0.4)}'; then
  ok "masked-LM loss fell by more than 20% and below ln 36 - 0.4 (it uses the context)"
else bad "masked-LM loss did not fall"; tail -3 "$tmp/mlm.log"; fi
mlm_acc=$(last_valid "$tmp/mlm/metrics.jsonl" accuracy)
if awk -v a="$mlm_acc" 'BEGIN {exit !(a > 0 && a <= 1)}'; then ok "masked-LM valid accuracy $mlm_acc reported"
else bad "masked-LM valid accuracy missing ($mlm_acc)"; fi

echo "masked-LM: stopped at step 5 and resumed = uninterrupted (bit for bit)"
run 1 train "$tmp/mlm.conf" out="$tmp/mfull" max_steps=10 >/dev/null 2>&1
run 1 train "$tmp/mlm.conf" out="$tmp/mhalf" max_steps=5 >/dev/null 2>&1
run 1 train "$tmp/mlm.conf" out="$tmp/mhalf" max_steps=10 >"$tmp/mhalf2.log" 2>&1
losses "$tmp/mfull/metrics.jsonl" >"$tmp/mfull.loss"
losses "$tmp/mhalf/metrics.jsonl" >"$tmp/mhalf.loss"
if grep -q "resumed from" "$tmp/mhalf2.log" && same "$tmp/mhalf.loss" "$tmp/mfull.loss" 0; then
  ok "resumed masked-LM losses identical"
else bad "resumed masked-LM losses differ"; fi

echo "init_from: a classifier starts from the masked-LM encoder"
run 1 train "$tmp/clf.conf" out="$tmp/init" init_from="$tmp/mlm/ckpt" norm=post max_steps=1 lr=0 \
  >"$tmp/init.log" 2>&1
grep "init_from" "$tmp/init.log" | sed 's/^/    /'
if grep -q "loaded 33 encoder tensors" "$tmp/init.log" && $PY -c '
import glob, sys, h5py, numpy as np
a = h5py.File(sorted(glob.glob(sys.argv[1] + "/ckpt_*.h5"))[-1], "r")["model"]
b = h5py.File(sorted(glob.glob(sys.argv[2] + "/ckpt_*.h5"))[-1], "r")["model"]
enc = [k for k in b if k.startswith("encoder.")]
assert len(enc) == 33 and all(np.array_equal(a[k][()], b[k][()]) for k in enc), "encoder differs"
assert not any(k.startswith("decoder.") for k in b), "decoder tensors in a classifier"
head = [k for k in b if k.startswith("classification_heads.")]
assert len(head) == 4 and not any(k in a for k in head), head' "$tmp/mlm/ckpt" "$tmp/init/ckpt"; then
  ok "33 encoder tensors equal to the masked-LM's, 4 fresh head tensors, no decoder"
else bad "init_from did not load the encoder"; fi

expect_fail() { # np, expected message, args...
  local np=$1 msg=$2
  shift 2
  local out rc
  out=$(run "$np" "$@" 2>&1)
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF -- "$msg" <<<"$out"; then ok "refused: $msg"
  else bad "expected failure with '$msg' (exit $rc): $(head -3 <<<"$out")"; fi
}
echo "bad input: clear message, non-zero exit, no hang"
expect_fail 2 "cannot load its encoder" train "$tmp/clf.conf" out="$tmp/bad1" norm=post \
  init_from="$tmp/mlm/ckpt" d_model=16 ffn_dim=32
expect_fail 2 "needs a sentence-pair classification dataset" train "$tmp/clf.conf" \
  out="$tmp/bad2" data="$tmp/tiny.h5"
expect_fail 1 "init_from=" train "$tmp/clf.conf" out="$tmp/bad3" init_from="$tmp/missing.h5"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
