#!/usr/bin/env bash
# test_torch_ref.sh: the C model against the PyTorch reference of docs/MODEL.md.
#
# Builds tiny random datasets (tests/make_tiny_dataset.py), trains 3 steps on 1 rank for
# each configuration (so biases and LayerNorm parameters have left their initial values),
# dumps one batch's loss and gradients (`mpiformer dump`), and checks all dumps in one
# run of tests/torch_ref.py (importing torch once costs seconds). Configurations:
#   norm post and pre x share_embeddings none and all, decoder_io once,
#   label_smoothing=0 once, and a heavily padded batch (the post/none model on a
#   skewed valid split, 3 sentences of 40 tokens and 21 of 1..3, all in one batch);
#   and the sentence-pair classifier (arch=encoder_classifier) in both norms; all of it
#   with each matmul engine (gemm=openblas, and gemm=onednn where the build has oneDNN).
# Tolerances and their reasoning: docs/TESTING.md. Needs /usr/bin/python3 with torch,
# h5py and numpy (Debian python3-torch, python3-h5py). Exits non-zero on any failure and
# ends with "N passed, N failed" (the script's own steps plus torch_ref.py's checks).
# Env: MPIFORMER_BIN (default bin/mpiformer), PYTHON (default /usr/bin/python3).
set -u
cd "$(dirname "$0")/.."
BIN=${MPIFORMER_BIN:-bin/mpiformer}
PY=${PYTHON:-/usr/bin/python3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_rmaps_base_oversubscribe=1
passed=0
failed=0
tmp=$(mktemp -d /tmp/test_torch_ref.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

step() { # name, command...: run, count, show the output on failure
  local name=$1
  shift
  if "$@" >"$tmp/log" 2>&1; then
    passed=$((passed + 1))
    echo "  ok    $name"
  else
    failed=$((failed + 1))
    echo "  FAIL  $name"
    tail -n 20 "$tmp/log" | sed 's/^/        /'
  fi
}

finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit $?
}

if [ ! -x "$BIN" ]; then
  echo "  FAIL  $BIN is missing: run make first"
  failed=$((failed + 1))
  finish
fi
if ! "$PY" -c 'import torch, h5py, numpy' 2>/dev/null; then
  echo "  FAIL  $PY cannot import torch, h5py and numpy (apt-get install python3-torch python3-h5py)"
  failed=$((failed + 1))
  finish
fi

step "tiny dataset" "$PY" tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 200 --valid 20 --seed 1
step "pair dataset" "$PY" tests/make_tiny_dataset.py "$tmp/pairs.h5" --pairs --vocab 40 --train 200 \
  --valid 20 --seed 2
step "skewed dataset" "$PY" tests/make_tiny_dataset.py "$tmp/skew.h5" --vocab 40 --train 16 --valid 24 \
  --test 8 --max-len 40 --skew --seed 3

TINY=(arch=transformer enc_layers=2 dec_layers=2 d_model=16 ffn_dim=24 heads=2 dropout=0
  attn_dropout=0 act_dropout=0 lr=1e-3 warmup_steps=0 max_tokens=256 max_steps=3 eval_bleu=0
  log_interval=1 eval_interval=1000 save_interval=3 resume=none "data=$tmp/tiny.h5")
pairs=()

# dump NAME RUN [key=value...]: dump batch 0 of the valid split with RUN's checkpoint
dump() {
  local name=$1 run=$2
  shift 2
  local ck="$tmp/$run/ckpt/ckpt_00000003.h5"
  step "dump $name" mpirun -np 1 "$BIN" dump "$tmp/$run/config.conf" "ckpt=$ck" \
    "dump=$tmp/$name.dump.h5" split=valid batch=0 "$@"
  if [ -f "$ck" ] && [ -f "$tmp/$name.dump.h5" ]; then
    pairs+=("$ck" "$tmp/$name.dump.h5")
  else
    echo "  FAIL  $name: no checkpoint or dump to compare"
    failed=$((failed + 1))
  fi
}

# train_dump NAME key=value...: train 3 steps, then dump
train_dump() {
  local name=$1
  shift
  step "train $name" mpirun -np 1 "$BIN" train /dev/null "${TINY[@]}" "out=$tmp/$name" "$@"
  dump "$name" "$name"
}

# Every configuration with each matmul engine this build has (gemm=openblas, gemm=onednn):
# the same tolerances hold for both (they differ by float rounding only).
engines=(openblas)
ldd "$BIN" | grep -q libdnnl && engines+=(onednn)
for eng in "${engines[@]}"; do
  E=(gemm=$eng)
  train_dump post_none.$eng norm=post share_embeddings=none label_smoothing=0.1 "${E[@]}"
  train_dump post_all.$eng norm=post share_embeddings=all label_smoothing=0.1 "${E[@]}"
  train_dump pre_none.$eng norm=pre share_embeddings=none label_smoothing=0.1 "${E[@]}"
  train_dump pre_all.$eng norm=pre share_embeddings=all label_smoothing=0.1 "${E[@]}"
  train_dump pre_decoder_io.$eng norm=pre share_embeddings=decoder_io label_smoothing=0.1 "${E[@]}"
  train_dump pre_all_ls0.$eng norm=pre share_embeddings=all label_smoothing=0 "${E[@]}"
  # Heavy padding: the whole skewed valid split in one batch (24 x 41, about 80% pads on
  # each side), so the pad masks and the loss's pad handling carry most of the batch.
  dump post_none_padded.$eng post_none.$eng "data=$tmp/skew.h5" max_tokens=100000 "${E[@]}"
  # The sentence-pair classifier (encoder + RoBERTa head, plain cross-entropy), both norms
  train_dump clf_post.$eng arch=encoder_classifier norm=post "data=$tmp/pairs.h5" "${E[@]}"
  train_dump clf_pre.$eng arch=encoder_classifier norm=pre "data=$tmp/pairs.h5" "${E[@]}"
done
echo "  (engines: ${engines[*]})"

if [ ${#pairs[@]} -gt 0 ]; then
  "$PY" tests/torch_ref.py --self-test "${pairs[@]}" | tee "$tmp/ref.log"
  rc=${PIPESTATUS[0]}
  line=$(tail -n 1 "$tmp/ref.log")
  if [[ "$line" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
    [ "$rc" -ne 0 ] && [ "${BASH_REMATCH[2]}" -eq 0 ] && failed=$((failed + 1))
  else
    echo "  FAIL  torch_ref.py ended without a summary (rc $rc)"
    failed=$((failed + 1))
  fi
fi
finish
