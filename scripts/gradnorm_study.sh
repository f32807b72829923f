#!/usr/bin/env bash
# The paper's Figure 3 at small scale: ||dL/dW2||_F of every layer's second FFN weight at
# initialization (mpiformer gradnorm), for Post-LN and Pre-LN.
#   runs/gradnorm/layers-{post,pre}.jsonl   6+6 model, every layer, GN_SEEDS seeds x GN_BATCHES
#   runs/gradnorm/depth-{post,pre}.jsonl    6+6 .. 14+14, every layer (the report uses the last)
#   runs/gradnorm/encoder-only-{mlm,clf}.jsonl  the 6-layer encoder-only models, both norms
# It does not train anything. Model: the translation study's (jobs/study/mt-pre-nowu-5e-4.conf,
# d_model 128, FFN 512, 4 heads) with dropout 0, on real Bible training batches.
# Environment: NP (ranks, 2), BIN (bin), GN_SEEDS (10), GN_BATCHES (4), GN_DEPTH_SEEDS (4),
# GN_DEPTH_BATCHES (2), GN_DEPTHS ("6 8 10 12 14"), GN_TOKENS (max_tokens per batch, 1024),
# GN_JOBS (jobs/study: the translation model is its mt-pre-nowu-5e-4.conf, or GN_MT_CONF;
# the encoder-only ones its first mlm-*.conf and clf-*.conf), GN_OUT (runs/gradnorm).
# Measured on the shared 2-core box: about 2-3 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
NP=${NP:-2}
BIN=${BIN:-bin}
SEEDS=${GN_SEEDS:-10}
BATCHES=${GN_BATCHES:-4}
DSEEDS=${GN_DEPTH_SEEDS:-4}
DBATCHES=${GN_DEPTH_BATCHES:-2}
DEPTHS=${GN_DEPTHS:-6 8 10 12 14}
TOKENS=${GN_TOKENS:-1024}
JOBS=${GN_JOBS:-jobs/study}
CONF=${GN_MT_CONF:-$JOBS/mt-pre-nowu-5e-4.conf}
OUT=${GN_OUT:-runs/gradnorm}
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# gradnorm NAME key=value...: one measurement, JSON lines appended to $OUT/NAME.jsonl
# (GN_CONF: another job file than the translation study's)
gradnorm() {
  local name=$1
  shift
  mpirun --oversubscribe -np "$NP" "$BIN/mpiformer" gradnorm "${GN_CONF:-$CONF}" out="$TMP" dropout=0 \
    max_tokens="$TOKENS" "$@" | grep '^{"type":"gradnorm"' >> "$OUT/$name.jsonl"
}

t0=$(date +%s)
for norm in post pre; do
  rm -f "$OUT/layers-$norm.jsonl" "$OUT/depth-$norm.jsonl"
  echo "gradnorm: $norm-LN 6+6, every layer, $SEEDS seeds x $BATCHES batches"
  gradnorm "layers-$norm" norm=$norm seeds="$SEEDS" batches="$BATCHES"
  for L in $DEPTHS; do
    echo "gradnorm: $norm-LN $L+$L, $DSEEDS seeds x $DBATCHES batches"
    gradnorm "depth-$norm" norm=$norm enc_layers="$L" dec_layers="$L" seeds="$DSEEDS" batches="$DBATCHES"
  done
done
# The encoder alone: the 6-layer encoders of the classification study, from scratch
# (init_from cleared), with their own heads: the masked-LM (a loss at every selected
# token, like the decoder's) and the classifier (one loss per sentence, read at bos).
for arch in mlm clf; do
  rm -f "$OUT/encoder-only-$arch.jsonl"
  conf=$(ls "$JOBS"/$arch-*.conf 2>/dev/null | head -n 1)
  [ -n "$conf" ] || continue
  data=$(sed -n 's/^[[:space:]]*data[[:space:]]*=[[:space:]]*\([^#[:space:]]*\).*/\1/p' "$conf" | tail -n 1)
  if [ ! -f "$data" ]; then
    echo "gradnorm: encoder-only $arch skipped: its data $data does not exist"
    continue
  fi
  for norm in post pre; do
    echo "gradnorm: encoder-only $arch, $norm-LN, $DSEEDS seeds x $BATCHES batches"
    GN_CONF=$conf gradnorm "encoder-only-$arch" norm=$norm init_from= seeds="$DSEEDS" batches="$BATCHES"
  done
done
echo "gradnorm: done in $(($(date +%s) - t0)) s -> $OUT/{layers,depth}-{post,pre}.jsonl, $OUT/encoder-only-{mlm,clf}.jsonl"
