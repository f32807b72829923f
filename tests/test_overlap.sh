#!/usr/bin/env bash
# test_overlap.sh: the data-parallel gradient sum in buckets during the backward
# (grad_overlap = 1, gradsync.c) against one blocking sum after it (grad_overlap = 0).
#   1. per-step loss and gnorm, and the final checkpoint's tensors and Adam moments, are
#      bitwise equal with 1 KiB buckets (hundreds per step, every readiness class: tensors
#      of each sublayer, tied embeddings, replicated vectors) on dp=2, dp=2 zero=1, dp=2
#      with 3 micro-batches an update, dp=2 x pp=2 with embeddings tied across the stages,
#      dp=2 x tp=2 on a 2x1 grid (vectors complete only at the end) and a classifier;
#      dp=4 and dp=4 zero=1 within float32 rounding (other orders of the sums' terms);
#   2. an overlapped run stopped at step 10 and resumed gives the uninterrupted run's bits;
#   3. the timeline (MPIFORMER_TRACE): in every update the buckets launch inside the
#      last backward, and on each rank buckets complete inside it, i.e. they moved while
#      the rank computed; with grad_overlap = 0 there are none.
# The model's map of when each gradient is final (model_grad_ready) is checked write by
# write in the DEBUG=1 build (test_debug_build.sh).
source "$(dirname "$0")/lib.sh"
$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 \
  --seed 3 >/dev/null || exit 1
$PY tests/make_tiny_dataset.py "$tmp/pairs.h5" --pairs --vocab 40 --train 600 --valid 60 \
  --test 20 --seed 3 --max-len 8 >/dev/null || exit 1
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 32" \
  "ffn_dim = 64" "heads = 4" "norm = pre" "dropout = 0.1" "attn_dropout = 0.1" \
  "act_dropout = 0.1" "lr = 2e-3" "warmup_steps = 4" "max_tokens = 160" "log_interval = 1" \
  "eval_interval = 100" "eval_bleu = 0" "save_interval = 10" "max_steps = 20" >"$tmp/mt.conf"
printf '%s\n' "data = $tmp/pairs.h5" "enc_layers = 2" "d_model = 32" "ffn_dim = 64" \
  "heads = 4" "lr = 2e-3" "warmup_steps = 0" "lr_scheduler = constant" "log_interval = 1" \
  "eval_bleu = 0" "dropout = 0.1" "max_tokens = 300" "eval_interval = 100" \
  "save_interval = 10" "max_steps = 20" "arch = encoder_classifier" >"$tmp/enc.conf"
final=ckpt/ckpt_00000020.h5

# pair TOL NAME NP CONF ARGS...: grad_overlap=0 and =1 (1 KiB buckets). TOL = 0: the logged
# losses and gnorms (6 decimals) and the final checkpoint equal bitwise; else the losses
# within relative TOL (float32 rounding of another reduction order), weights' drift shown
pair() {
  local tol=$1 name=$2 np=$3 conf=$4
  shift 4
  run "$np" train "$tmp/$conf" out="$tmp/$name.off" grad_overlap=0 "$@" >"$tmp/$name.off.log" 2>&1 ||
    { bad "$name, grad_overlap=0: exit $?"; tail -5 "$tmp/$name.off.log"; return; }
  MPIFORMER_TRACE="$tmp/$name.trace" run "$np" train "$tmp/$conf" out="$tmp/$name.on" \
    grad_overlap=1 grad_bucket_mb=0.001 "$@" >"$tmp/$name.on.log" 2>&1 ||
    { bad "$name, grad_overlap=1: exit $?"; tail -5 "$tmp/$name.on.log"; return; }
  loss_gnorm "$tmp/$name.off/metrics.jsonl" >"$tmp/$name.off.loss"
  loss_gnorm "$tmp/$name.on/metrics.jsonl" >"$tmp/$name.on.loss"
  ckpt_sums "$tmp/$name.off/$final" >"$tmp/$name.off.sums" 2>&1
  ckpt_sums "$tmp/$name.on/$final" >"$tmp/$name.on.sums" 2>&1
  if [ "$tol" != 0 ]; then
    local drift
    drift=$($PY -c '
import h5py, numpy as np, sys
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
d = [np.abs(a["model"][k][()] - b["model"][k][()]).max() for k in a["model"]]
print(f"largest weight difference after 20 steps {max(d):.2g}")' "$tmp/$name.off/$final" "$tmp/$name.on/$final")
    if out=$(same <(losses "$tmp/$name.off/metrics.jsonl") <(losses "$tmp/$name.on/metrics.jsonl") "$tol"); then
      ok "$name ($*): ${out# *}; $drift"
    else bad "$name ($*): $out"; fi
    return
  fi
  if [ "$(wc -l <"$tmp/$name.on.loss")" -eq 20 ] && cmp -s "$tmp/$name.off.loss" "$tmp/$name.on.loss" &&
    [ -s "$tmp/$name.on.sums" ] && cmp -s "$tmp/$name.off.sums" "$tmp/$name.on.sums"; then
    ok "$name ($*): 20 logged losses and gnorms equal, $(wc -l <"$tmp/$name.on.sums") checkpoint tensors bitwise equal"
  else
    bad "$name ($*): overlapped run differs"
    diff "$tmp/$name.off.loss" "$tmp/$name.on.loss" | head -4
    diff "$tmp/$name.off.sums" "$tmp/$name.on.sums" | head -4
  fi
}

echo "overlapped against blocking gradient sums"
pair 0 dp2 2 mt.conf
pair 0 dp2z 2 mt.conf zero=1
pair 0 dp2uf3 2 mt.conf update_freq=3 # only the last of 3 backwards launches buckets
pair 0 dp2pp2 4 mt.conf pp=2 microbatches=2 share_embeddings=all norm=post
pair 0 dp2tp2 4 mt.conf tp=2 tp_grid=2x1
pair 0 clf 2 enc.conf
# 4 ranks: the buckets' ring all-reduce (gradsync_mpi_defaults) and Open MPI's blocking
# all-reduce, and its blocking and non-blocking reduce-scatter (zero=1), add the four terms
# of some elements in other orders: last-bit differences from step 1
pair 1e-5 dp4 4 mt.conf
pair 1e-5 dp4z 4 mt.conf zero=1

echo "resume of an overlapped run"
run 2 train "$tmp/mt.conf" out="$tmp/res" grad_bucket_mb=0.001 max_steps=10 >"$tmp/res1.log" 2>&1 &&
  run 2 train "$tmp/mt.conf" out="$tmp/res" grad_bucket_mb=0.001 >"$tmp/res2.log" 2>&1
loss_gnorm "$tmp/res/metrics.jsonl" | sort -n -k1,1 -u >"$tmp/res.loss"
if grep -q "resumed from" "$tmp/res2.log" && cmp -s "$tmp/res.loss" "$tmp/dp2.on.loss" &&
  cmp -s <(ckpt_sums "$tmp/res/$final") "$tmp/dp2.on.sums"; then
  ok "stopped at step 10, resumed: 20 losses and the final checkpoint equal the uninterrupted run's"
else bad "resumed overlapped run differs"; diff "$tmp/res.loss" "$tmp/dp2.on.loss" | head -4; fi

echo "the timeline"
MPIFORMER_TRACE="$tmp/off.trace" run 2 train "$tmp/mt.conf" out="$tmp/off" grad_overlap=0 \
  max_steps=3 >/dev/null 2>&1
verdict=$($PY - "$tmp/dp2.trace.rank0.json" "$tmp/dp2.trace.rank1.json" "$tmp/off.trace.rank0.json" <<'PY'
import json, sys
def spans(ev, name):
    out, t = [], None
    for e in ev:
        if e["name"] == name and e["ph"] == "B": t = e["ts"]
        if e["name"] == name and e["ph"] == "E": out.append((t, e["ts"]))
    return out
msgs, good = [], True
for path in sys.argv[1:3]:
    ev = json.load(open(path))["traceEvents"]
    waits = spans(ev, "grad wait")
    bwd = spans(ev, "backward")
    # the last backward before each wait is the update's last
    last = [max(b for b in bwd if b[1] <= w[0]) for w in waits]
    b = [e["ts"] for e in ev if e["name"] == "grad bucket" and e["ph"] == "b"]
    e = [x["ts"] for x in ev if x["name"] == "grad bucket" and x["ph"] == "e"]
    n_in = [sum(s <= t <= f for t in b) for s, f in last]
    done_in = [sum(s <= t <= f for t in e) for s, f in last]
    # how many complete before the wait depends on the partner's timing; none would mean
    # that nothing moved while this rank computed
    ok = len(waits) == 20 and min(n_in) > 0 and sum(done_in) > 0
    good &= ok
    msgs.append(f"{path.rsplit('.', 2)[-2]}: {len(waits)} updates, buckets launched in the last "
                f"backward {min(n_in)}..{max(n_in)} of {len(b) // max(len(waits), 1)}, "
                f"{sum(done_in)} of {len(e)} completed inside it")
off = json.load(open(sys.argv[3]))["traceEvents"]
n_off = sum(x["name"] == "grad bucket" for x in off)
good &= n_off == 0 and any(x["name"] == "backward" for x in off)
msgs.append(f"grad_overlap=0: {n_off} bucket events")
print(("OK " if good else "BAD ") + "; ".join(msgs))
PY
)
case "$verdict" in OK*) ok "${verdict#OK }" ;; *) bad "${verdict#BAD }" ;; esac
finish
