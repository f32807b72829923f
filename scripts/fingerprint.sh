#!/usr/bin/env bash
# fingerprint.sh OUTFILE: the proof that a refactor moved no float. Trains a few fixed
# tiny runs (1 rank, dp=2 zero=1, tp=2, pp=2, a classifier, a masked-LM) and writes, per
# run, every training and validation loss at full precision and a SHA-256 of every
# dataset's bytes and the step attributes of the final checkpoint. Run it before and
# after a change and `cmp` the two files: bitwise identical or the change moved numbers.
# The matmul engine is pinned (gemm=openblas precision=fp32) so that the file does not
# depend on the CPU (gemm=auto takes oneDNN on AVX-512 CPUs).
set -u
source "$(dirname "$0")/../tests/lib.sh"
outfile=$(realpath -m "${1:?usage: fingerprint.sh OUTFILE}")
$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 \
  --seed 3 >/dev/null || exit 1
$PY tests/make_tiny_dataset.py "$tmp/pairs.h5" --pairs --vocab 40 --train 600 --valid 60 \
  --test 20 --seed 3 --max-len 8 >/dev/null || exit 1
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 32" \
  "ffn_dim = 64" "heads = 4" "norm = pre" "dropout = 0.1" "attn_dropout = 0.1" \
  "act_dropout = 0.1" "lr = 2e-3" "warmup_steps = 4" "max_tokens = 160" "log_interval = 1" \
  "eval_interval = 10" "eval_bleu = 0" "beam = 2" "save_interval = 10" "gemm = openblas" \
  "precision = fp32" >"$tmp/mt.conf"
printf '%s\n' "data = $tmp/pairs.h5" "enc_layers = 2" "d_model = 32" "ffn_dim = 64" \
  "heads = 4" "lr = 2e-3" "warmup_steps = 0" "lr_scheduler = constant" "log_interval = 1" \
  "eval_bleu = 0" "dropout = 0.1" "max_tokens = 300" "eval_interval = 10" \
  "save_interval = 10" "gemm = openblas" "precision = fp32" >"$tmp/enc.conf"
fp() { # name np conf args...
  local name=$1 np=$2 conf=$3; shift 3
  if ! run "$np" train "$tmp/$conf" out="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1; then
    echo "$name: exit $?"; tail -5 "$tmp/$name.log"; return
  fi
  echo "== $name"
  $PY - "$tmp/$name" <<'PY'
import glob, hashlib, json, sys, h5py
d = sys.argv[1]
for line in open(d + "/metrics.jsonl"):
    o = json.loads(line)
    if o["type"] in ("train", "valid"):
        print(o["type"], o["step"], o["loss"], o.get("nll"), o.get("gnorm"), o.get("accuracy"))
f = h5py.File(sorted(glob.glob(d + "/ckpt/ckpt_*.h5"))[-1], "r")
for k in ("step", "epoch", "batch_in_epoch", "tokens_seen"):
    print(k, f.attrs[k])
def visit(name, obj):
    if isinstance(obj, h5py.Dataset):
        print(name, hashlib.sha256(obj[()].tobytes()).hexdigest()[:16], obj.attrs.get("checksum"))
f.visititems(visit)
PY
}
{
  fp one 1 mt.conf max_steps=20
  fp dp2 2 mt.conf max_steps=20 zero=1
  fp tp2 2 mt.conf max_steps=20 tp=2
  fp pp2 2 mt.conf max_steps=20 pp=2 microbatches=2 norm=post
  fp clf 2 enc.conf max_steps=20 arch=encoder_classifier norm=post
  fp mlm 1 enc.conf max_steps=20 arch=encoder_mlm norm=pre
} >"$outfile"
grep -c . "$outfile"
