#!/usr/bin/env bash
# make demo: prepare the Bible corpus, train a small Pre-LN model without warm-up on 2
# ranks for a few minutes (8 by default), print test BLEU with beam search and example translations,
# and plot loss and BLEU against wall time (runs/demo/curves.png).
# Environment: DEMO_TIME (seconds of training, default 480), NP (ranks, default 2),
# PRECISION (fp32 or bf16; default: bf16 where the CPU has bf16 instructions, else fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
NP=${NP:-2}
TIME=${DEMO_TIME:-480}
OUT=runs/demo
MPIRUN=(mpirun --oversubscribe -np "$NP")

echo "== 1/5 data: the Spanish-English Bible (data/bible/es-en.h5)"
data_prep/prepare_bible.sh data/bible 8000

# The fastest precision this CPU supports (docs/MODEL.md, "Matmul engines and bf16
# precision"): bf16 on oneDNN where the CPU has bf16 instructions (AVX512-BF16 or AMX),
# else fp32 with gemm=auto (bf16 without them is emulated and no faster). PRECISION overrides.
if [ -z "${PRECISION:-}" ]; then
  PRECISION=fp32
  if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo && ldd bin/mpiformer | grep -q libdnnl; then
    PRECISION=bf16
  fi
fi
PREC=(precision="$PRECISION")
[ "$PRECISION" = bf16 ] && PREC+=(gemm=onednn)
echo "== 2/5 train: jobs/demo.conf on $NP ranks for ${TIME}s, ${PREC[*]} (resume=auto continues a previous demo)"
"${MPIRUN[@]}" bin/mpiformer train jobs/demo.conf out=$OUT max_time="$TIME" "${PREC[@]}"

echo "== 3/5 test BLEU, beam 5 (first 300 test verses)"
head -n 300 data/bible/test.es > $OUT/test300.es
head -n 300 data/bible/test.en > $OUT/test300.en
"${MPIRUN[@]}" bin/mpiformer translate jobs/demo.conf out=$OUT ckpt=$OUT/ckpt beam=5 lenpen=1.0 "${PREC[@]}" \
  < $OUT/test300.es > $OUT/test300.hyp
bin/mpiformer bleu $OUT/test300.hyp $OUT/test300.en | tee $OUT/test_bleu.txt

echo "== 4/5 examples (source / reference / ours)"
for i in 1 50 120 200 280; do
  echo "  es:  $(sed -n "${i}p" $OUT/test300.es)"
  echo "  ref: $(sed -n "${i}p" $OUT/test300.en)"
  echo "  ours: $(sed -n "${i}p" $OUT/test300.hyp)"
  echo
done

echo "== 5/5 plot: $OUT/curves.png"
scripts/plot_run.sh $OUT
