#!/usr/bin/env bash
# test_tp.sh: tensor parallelism end to end through bin/mpiformer (tiny dataset, dropout on).
#  - the per-step losses of tp=2 as 1x2 and as 2x1 equal those of one rank (rel 1e-4:
#    Adam amplifies the float differences of test_tp.c's gradients a little);
#  - tp=2 combined with dp=2 (4 ranks, zero=1) equals dp=2 with tp=1 (2 ranks);
#  - a checkpoint written with tp=2 (1x2) resumes with tp=1 and one written with tp=1
#    resumes with tp=2 (2x1): the resumed losses equal those of a run that never stopped;
#  - eval with tp=2 (its BLEU decodes with the gathered model) prints the loss and BLEU of
#    eval with tp=1;
#  - gradnorm with tp=2 gives the norms of tp=1;
#  - impossible layouts are refused with a message: pc not dividing heads, tp not
#    dividing the ranks.
set -u
source "$(dirname "$0")/lib.sh"

$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 --seed 3 >/dev/null ||
  { echo "cannot build the tiny dataset"; echo "0 passed, 1 failed"; exit 1; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 32" \
  "ffn_dim = 70" "heads = 4" "norm = pre" "dropout = 0.1" "attn_dropout = 0.1" \
  "act_dropout = 0.1" "lr = 1e-3" "warmup_steps = 0" "lr_scheduler = constant" \
  "max_tokens = 160" "log_interval = 1" "eval_interval = 1000" "eval_bleu = 0" "beam = 2" \
  "save_interval = 4" > "$tmp/tiny.conf"
train() { # name np args...
  local name=$1 np=$2; shift 2
  run "$np" train "$tmp/tiny.conf" out="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1 ||
    { bad "$name: exit $?: $(grep -i error "$tmp/$name.log" | head -2)"; return 1; }
  losses "$tmp/$name/metrics.jsonl" > "$tmp/$name.loss"
}
compare() { # a b what
  if same "$tmp/$1.loss" "$tmp/$2.loss" 1e-4; then ok "$3"; else bad "$3"; fi
}

echo "tp=2 equals one rank (8 steps, both norms)"
for norm in pre post; do
  train "one_$norm" 1 max_steps=8 norm=$norm &&
    for grid in 1x2 2x1; do
      train "tp_${grid}_$norm" 2 max_steps=8 norm=$norm tp=2 tp_grid=$grid &&
        compare "tp_${grid}_$norm" "one_$norm" "tp=2 as $grid, $norm-LN: the losses of one rank"
    done
done

echo "tp=2 x dp=2 on 4 ranks equals dp=2"
train dp2 2 max_steps=6 zero=1 && train dp2tp2 4 max_steps=6 zero=1 tp=2 tp_grid=1x2 &&
  compare dp2tp2 dp2 "dp=2 tp=2 (4 ranks, zero=1): the losses of dp=2 tp=1"

echo "checkpoints cross between tp=2 and tp=1"
# one_pre ran 8 steps without stopping and saved at steps 4 and 8
train x21 2 max_steps=4 tp=2 tp_grid=1x2 && train x21 1 max_steps=8 &&
  if grep -q "resumed from .*ckpt_00000004.h5" "$tmp/x21.log"; then
    compare x21 one_pre "written with tp=2 (1x2) at step 4, resumed with tp=1: steps 5-8 as never stopped"
  else bad "the tp=1 run did not resume from the tp=2 checkpoint"; fi
train x12 1 max_steps=4 && train x12 2 max_steps=8 tp=2 tp_grid=2x1 &&
  if grep -q "resumed from .*ckpt_00000004.h5" "$tmp/x12.log"; then
    compare x12 one_pre "written with tp=1 at step 4, resumed with tp=2 (2x1): steps 5-8 as never stopped"
  else bad "the tp=2 run did not resume from the tp=1 checkpoint"; fi

echo "eval and gradnorm with tp=2"
ev() { run "$1" eval "$tmp/tiny.conf" ckpt="$tmp/one_pre/ckpt" split=valid eval_bleu=1 "${@:2}" 2>/dev/null | tail -1; }
e1=$(ev 1) e2=$(ev 2 tp=2 tp_grid=1x2)
echo "    tp=1: $e1" | cut -c1-160
echo "    tp=2: $e2" | cut -c1-160
if $PY -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"] and a["tokens"] == b["tokens"]
assert a["bleu_line"] == b["bleu_line"] and a["decoded"] == b["decoded"] > 0' "$e1" "$e2" 2>/dev/null; then
  ok "eval tp=2: the loss and the BLEU (decoded with the gathered model) of tp=1"
else bad "eval differs between tp=1 and tp=2"; fi
gn() { run "$1" gradnorm "$tmp/tiny.conf" out="$tmp/gn$1" seeds=1 batches=2 "${@:2}" 2>/dev/null |
  $PY -c 'import json, sys; print(" ".join("%.6e" % json.loads(l)["grad_norm_fc2"] for l in sys.stdin))'; }
g1=$(gn 1) g2=$(gn 2 tp=2 tp_grid=2x1)
echo "    tp=1: $g1"
echo "    tp=2: $g2"
if [ -n "$g1" ] && $PY -c '
import sys
a, b = [list(map(float, x.split())) for x in sys.argv[1:3]]
assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * x for x, y in zip(a, b))' "$g1" "$g2"; then
  ok "gradnorm tp=2 (2x1): the norms of tp=1"
else bad "gradnorm differs between tp=1 and tp=2"; fi

echo "impossible layouts"
expect_refusal() { # np message args...
  local np=$1 msg=$2; shift 2
  local out
  out=$(timeout 60 mpirun --oversubscribe -np "$np" "$BIN" train "$tmp/tiny.conf" out="$tmp/bad" "$@" 2>&1)
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF "$msg" <<<"$out"; then ok "$* on $np ranks: '$(grep -F "$msg" <<<"$out" | head -1 | cut -c1-120)'"
  else bad "$* on $np ranks: exit $rc, no '$msg'"; fi
}
expect_refusal 2 "must divide heads" tp=2 tp_grid=1x2 heads=1 d_model=32
expect_refusal 2 "cannot be split" tp=4
finish
