#!/usr/bin/env bash
# test_pp.sh: pipeline parallelism end to end through bin/mpiformer (tiny dataset, 2+2
# layers, all embeddings shared so the tied table sits on both stages, dropout on).
#  - the per-step losses of pp=2 with microbatches=4 equal those of one rank with
#    update_freq=4, in both norms (rel 1e-4, as test_tp.sh: Adam amplifies the float
#    differences of test_pp.c's gradients a little); so do pp=2 x tp=2 (4 ranks) and
#    dp=2 x pp=2 with zero=1 (4 ranks) against one rank with update_freq=8;
#  - a checkpoint written with pp=2 tp=2 resumes with pp=1 tp=1, and one written with
#    pp=1 tp=1 resumes with pp=2 tp=2: the resumed losses equal those of a run that never
#    stopped;
#  - eval with pp=2 (loss through the stages, BLEU decoded with the gathered model) prints
#    the loss and BLEU of pp=1;
#  - preemption: SIGUSR1 to a pp=2 x tp=2 run saves at a step boundary and exits 3, and
#    pp=2 tp=1 resumes from that step;
#  - the watchdog: a stage that skips a send (MPIFORMER_PP_SKIP_SEND) makes the next one
#    abort within pp_timeout with a message naming the ranks and the message awaited;
#  - the encoder-only archs (sentence-pair classifier, masked-LM) with pp=2 give the
#    training and validation losses of one rank;
#  - bad layouts are refused with a message.
set -u
source "$(dirname "$0")/lib.sh"

$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 --seed 3 >/dev/null ||
  { echo "cannot build the tiny dataset"; echo "0 passed, 1 failed"; exit 1; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 32" \
  "ffn_dim = 70" "heads = 4" "norm = pre" "dropout = 0.1" "attn_dropout = 0.1" \
  "act_dropout = 0.1" "lr = 1e-3" "warmup_steps = 0" "lr_scheduler = constant" \
  "max_tokens = 160" "log_interval = 1" "eval_interval = 3" "eval_bleu = 0" "beam = 2" \
  "save_interval = 4" "pp_timeout = 60" > "$tmp/tiny.conf"
train() { # name np args...
  local name=$1 np=$2; shift 2
  run "$np" train "$tmp/tiny.conf" out="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1 ||
    { bad "$name: exit $?: $(grep -i error "$tmp/$name.log" | head -2)"; return 1; }
  losses "$tmp/$name/metrics.jsonl" > "$tmp/$name.loss"
}
compare() { # a b what
  if same "$tmp/$1.loss" "$tmp/$2.loss" 1e-4; then ok "$3"; else bad "$3"; fi
}
valid_same() { # a b what: the periodic validation losses agree too
  if $PY -c '
import json, sys
v = [[o["loss"] for o in map(json.loads, open(f)) if o["type"] == "valid"] for f in sys.argv[1:3]]
assert v[0] and len(v[0]) == len(v[1]), v
assert all(abs(a - b) <= 1e-4 * b for a, b in zip(*v)), v' "$tmp/$1/metrics.jsonl" "$tmp/$2/metrics.jsonl"; then
    ok "$3"; else bad "$3"; fi
}

echo "pp=2 with 4 micro-batches equals one rank with update_freq=4 (8 steps, both norms)"
for norm in pre post; do
  train "one_$norm" 1 max_steps=8 norm=$norm update_freq=4 &&
    train "pp2_$norm" 2 max_steps=8 norm=$norm pp=2 microbatches=4 &&
    compare "pp2_$norm" "one_$norm" "pp=2, $norm-LN: the losses of one rank" &&
    valid_same "pp2_$norm" "one_$norm" "pp=2, $norm-LN: the validation losses (steps 3, 6, 8) of one rank"
done

echo "products on 4 ranks"
train pp2tp2 4 max_steps=8 pp=2 tp=2 tp_grid=1x2 microbatches=4 &&
  compare pp2tp2 one_pre "pp=2 x tp=2 (1x2): the losses of one rank"
train one_uf8 1 max_steps=5 update_freq=8 && train dp2pp2 4 max_steps=5 pp=2 microbatches=4 zero=1 &&
  compare dp2pp2 one_uf8 "dp=2 x pp=2 (zero=1): the losses of one rank with update_freq=8"

echo "checkpoints cross between pp=2 tp=2 and pp=1 tp=1"
# one_pre ran 8 steps without stopping and saved at steps 4 and 8
train x41 4 max_steps=4 pp=2 tp=2 tp_grid=2x1 microbatches=4 && train x41 1 max_steps=8 update_freq=4 &&
  if grep -q "resumed from .*ckpt_00000004.h5" "$tmp/x41.log"; then
    compare x41 one_pre "written with pp=2 tp=2 at step 4, resumed with pp=1 tp=1: steps 5-8 as never stopped"
  else bad "the pp=1 run did not resume from the pp=2 tp=2 checkpoint"; fi
train x14 1 max_steps=4 update_freq=4 && train x14 4 max_steps=8 pp=2 tp=2 tp_grid=1x2 microbatches=4 &&
  if grep -q "resumed from .*ckpt_00000004.h5" "$tmp/x14.log"; then
    compare x14 one_pre "written with pp=1 tp=1 at step 4, resumed with pp=2 tp=2: steps 5-8 as never stopped"
  else bad "the pp=2 tp=2 run did not resume from the pp=1 checkpoint"; fi

echo "eval with pp=2"
ev() { run "$1" eval "$tmp/tiny.conf" ckpt="$tmp/one_pre/ckpt" split=valid eval_bleu=1 "${@:2}" 2>/dev/null | tail -1; }
e1=$(ev 1) e2=$(ev 2 pp=2)
echo "    pp=1: $e1" | cut -c1-160
echo "    pp=2: $e2" | cut -c1-160
if $PY -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"] and a["tokens"] == b["tokens"]
assert a["bleu_line"] == b["bleu_line"] and a["decoded"] == b["decoded"] > 0' "$e1" "$e2" 2>/dev/null; then
  ok "eval pp=2: the loss and the BLEU (decoded with the gathered model) of pp=1"
else bad "eval differs between pp=1 and pp=2"; fi

echo "preemption of a 3D layout"
# SIGUSR1 (what slurm/train.sbatch forwards) to a pp=2 x tp=2 run on 4 ranks: it saves at
# a step boundary and exits 3; pp=2 tp=1 on 2 ranks resumes from that step
run 4 train "$tmp/tiny.conf" out="$tmp/sig" pp=2 tp=2 microbatches=2 max_steps=100000 \
  save_interval=100000 eval_interval=100000 >"$tmp/sig.log" 2>&1 &
sig_pid=$!
for _ in $(seq 600); do grep -q '^step' "$tmp/sig.log" && break; sleep 0.1; done
pkill -USR1 -f "^mpirun .*out=$tmp/sig pp=2" # mpirun forwards it to the ranks
wait $sig_pid
rc=$?
saved=$(sed -n 's/.*saving a checkpoint at step \([0-9]*\).*/\1/p' "$tmp/sig.log" | head -1)
if [ $rc -eq 3 ] && [ -n "$saved" ] && [ -f "$tmp/sig/ckpt/$(printf 'ckpt_%08d.h5' "$saved")" ]; then
  ok "SIGUSR1 to pp=2 tp=2: checkpoint at step $saved, exit 3"
  run 2 train "$tmp/tiny.conf" out="$tmp/sig" pp=2 microbatches=2 max_steps=$((saved + 2)) \
    >"$tmp/sig2.log" 2>&1
  if grep -q "resumed from .*at step $saved " "$tmp/sig2.log" &&
    [ "$(cat "$tmp/sig/ckpt/latest")" = "$(printf 'ckpt_%08d.h5' $((saved + 2)))" ]; then
    ok "pp=2 tp=1 resumed it at step $saved and went on to step $((saved + 2))"
  else bad "resume of the preempted run: $(grep -i -m2 'resumed\|error' "$tmp/sig2.log")"; fi
else bad "SIGUSR1 to pp=2 tp=2: exit $rc, saved at '${saved}': $(grep -i -m2 'error\|stop' "$tmp/sig.log")"; fi

echo "watchdog"
t0=$SECONDS
out=$(timeout 60 mpirun --oversubscribe -x MPIFORMER_PP_SKIP_SEND=0:1 -np 2 "$BIN" train "$tmp/tiny.conf" \
  out="$tmp/hang" pp=2 microbatches=4 max_steps=2 pp_timeout=3 2>&1)
rc=$? dt=$((SECONDS - t0))
msg="[rank 1] stage 1: waited 3 s for forward activations of micro-batch 1 from stage 0 (world rank 0)"
if [ $rc -eq 4 ] && [ $dt -lt 30 ] && grep -qF "$msg" <<<"$out"; then
  ok "stage 0 skips a send: exit $rc after ${dt}s with '$msg'"
else bad "watchdog: exit $rc after ${dt}s: $(grep -i -m2 'waited\|error' <<<"$out")"; fi

echo "encoder-only archs: pp=2 equals one rank (6 steps)"
$PY tests/make_tiny_dataset.py "$tmp/pairs.h5" --pairs --vocab 40 --train 300 --valid 40 \
  --test 10 --seed 3 --max-len 8 >/dev/null &&
  $PY tests/make_tiny_dataset.py "$tmp/runs.h5" --pairs --runs --vocab 40 --train 300 \
    --valid 40 --test 10 --seed 4 --max-len 10 >/dev/null ||
  bad "cannot build the pair datasets"
for arch in encoder_classifier encoder_mlm; do
  data=$tmp/pairs.h5 norm=post
  [ $arch = encoder_mlm ] && data=$tmp/runs.h5 norm=pre
  enc=(data="$data" arch=$arch norm=$norm max_tokens=200 max_steps=6 eval_interval=3)
  train "one_$arch" 1 "${enc[@]}" update_freq=2 &&
    train "pp2_$arch" 2 "${enc[@]}" pp=2 microbatches=2 &&
    compare "pp2_$arch" "one_$arch" "arch=$arch $norm-LN, pp=2: the losses of one rank" &&
    valid_same "pp2_$arch" "one_$arch" "arch=$arch, pp=2: the validation losses of one rank"
done

echo "bad layouts"
expect_refusal() { # np message args...
  local np=$1 msg=$2; shift 2
  local out
  out=$(timeout 60 mpirun --oversubscribe -np "$np" "$BIN" train "$tmp/tiny.conf" out="$tmp/bad" "$@" 2>&1)
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF "$msg" <<<"$out"; then ok "$* on $np ranks: '$(grep -F "$msg" <<<"$out" | head -1 | cut -c1-120)'"
  else bad "$* on $np ranks: exit $rc, no '$msg'"; fi
}
expect_refusal 2 "cannot be split" pp=3 enc_layers=2
expect_refusal 2 "pp=5 exceeds the 4 layers" pp=5
expect_refusal 2 "pp=3 exceeds the 2 layers of arch=encoder_mlm" pp=3 arch=encoder_mlm
expect_refusal 2 "microbatches=2 and update_freq=3 disagree" pp=2 microbatches=2 update_freq=3
finish
