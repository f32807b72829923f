#!/usr/bin/env bash
# test_debug_build.sh: the layout tests once more in a DEBUG=1 build, where every
# collective entry checks that the ranks passed the same shapes, step and flags
# (DEBUG_AGREE, debug.h), and proof that a wrong call is caught.
#   1. builds a second tree, $BUILD-debug (make DEBUG=1, WERROR passed through), with only
#      the library and the programs below;
#   2. runs test_dmat, test_tp, test_pp and test_debug at the rank counts of their NP lines:
#      a collective called with disagreeing values anywhere in them stops the run;
#   3. runs test_debug with rank 1 passing another size to dmat_gemm, to
#      tpops_layernorm_forward and to debug_agree itself, and expects a non-zero exit
#      within the timeout and the message that names the function and the value;
#   4. trains tiny overlapped dp=2 runs (pp=2 with tied embeddings, tp=2 2x1, encoder-only
#      heads) with 1 KiB gradient buckets, where gradsync checks that no gradient changes
#      after its bucket was launched, and shows that the check fires when the buckets are
#      declared ready too early (MPIFORMER_TEST_EARLY_BUCKETS).
source "$(dirname "$0")/lib.sh"
dbg=${BUILD:-build}; dbg=${dbg%/}-debug
progs="test_dmat test_tp test_pp test_debug"
t0=$SECONDS
# a make above us (make test) passes its own BUILD/DEBUG in MAKEFLAGS: not ours
if env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -j"$(nproc)" --no-print-directory \
  BUILD="$dbg" BIN="$dbg/bin" DEBUG=1 WERROR="${WERROR:-}" \
  $(printf "$dbg/tests/%s " $progs) "$dbg/bin/mpiformer" >"$tmp/make.log" 2>&1; then
  ok "DEBUG=1 build in $dbg ($((SECONDS - t0)) s)"
else
  bad "DEBUG=1 build in $dbg failed:"; tail -20 "$tmp/make.log"; finish
fi
grep -q -- "-DMPIFORMER_DEBUG=1" <(make -n --no-print-directory BUILD="$dbg" BIN="$dbg/bin" \
  DEBUG=1 -B "$dbg/debug.o" 2>/dev/null) && ok "the DEBUG=1 tree is compiled with -DMPIFORMER_DEBUG=1" ||
  bad "make DEBUG=1 does not define MPIFORMER_DEBUG"

for p in $progs; do
  nps=$(sed -n 's|^// NP: *||p' "tests/$p.c" | head -1)
  for np in ${nps:-1}; do
    t0=$SECONDS
    if timeout 300 mpirun --oversubscribe -np "$np" "$dbg/tests/$p" >"$tmp/out" 2>&1; then
      ok "$p np=$np, DEBUG=1: $(tail -1 "$tmp/out") ($((SECONDS - t0)) s)"
    else
      bad "$p np=$np, DEBUG=1:"; tail -20 "$tmp/out"
    fi
  done
done

expect_caught() {  # mode, the message's function and value
  local mode=$1 want=$2
  timeout 60 mpirun --oversubscribe -np 2 "$dbg/tests/test_debug" "$mode" >"$tmp/out" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "passed different values: $want" "$tmp/out" &&
    ! grep -q "returned" "$tmp/out"; then
    ok "$mode with disagreeing sizes: exit $rc, '$(grep -m1 -o "[a-z_]*: the ranks.*" "$tmp/out")'"
  else
    bad "$mode with disagreeing sizes: exit $rc (want non-zero, not a timeout) and"
    echo "    '$want' in:"; tail -8 "$tmp/out" | sed 's/^/    /'
  fi
}
expect_caught gemm "value 5 of 7 (k): min 4, max 5"
expect_caught layernorm "value 1 of 3 (n): min 2, max 3"
expect_caught direct "value 2 of 2 (size): min 8, max 9"

# the overlapped gradient buckets: a DEBUG=1 build reduces a copy of each bucket and aborts
# if the backward writes into it after its launch (model_grad_ready wrong for a layout)
$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 200 --valid 24 --test 24 \
  --seed 3 >/dev/null || exit 1
$PY tests/make_tiny_dataset.py "$tmp/pairs.h5" --pairs --vocab 40 --train 200 --valid 24 \
  --test 20 --seed 3 --max-len 8 >/dev/null || exit 1
common="enc_layers=2 d_model=32 ffn_dim=64 heads=4 max_tokens=160 eval_bleu=0 max_steps=4"
common="$common log_interval=1 eval_interval=100 save_interval=100 grad_bucket_mb=0.001"
ready_run() { # NAME DATA ARGS...: a 4-rank overlapped run of the DEBUG=1 binary
  local name=$1 data=$2
  shift 2
  # shellcheck disable=SC2086
  timeout 300 mpirun --oversubscribe -np 4 "$dbg/bin/mpiformer" train data="$tmp/$data" \
    out="$tmp/$name" $common "$@" >"$tmp/$name.log" 2>&1
}
k=0
for lay in "pp=2 microbatches=2 share_embeddings=all norm=post" "tp=2 tp_grid=2x1 zero=1" \
  "pp=2 microbatches=3 share_embeddings=decoder_io dec_layers=2"; do
  if ready_run "r$((++k))" tiny.h5 dec_layers=2 $lay; then
    ok "dp=2 $lay, DEBUG=1: no gradient written after its bucket's launch"
  else bad "dp=2 $lay, DEBUG=1:"; tail -5 "$tmp/r$k.log"; fi
done
for arch in encoder_classifier encoder_mlm; do
  if ready_run "$arch" pairs.h5 arch=$arch pp=2 microbatches=2; then
    ok "dp=2 pp=2 arch=$arch, DEBUG=1: no gradient written after its bucket's launch"
  else bad "dp=2 pp=2 arch=$arch, DEBUG=1:"; tail -5 "$tmp/$arch.log"; fi
done
MPIFORMER_TEST_EARLY_BUCKETS=1 ready_run early tiny.h5 dec_layers=2
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "changed after its launch" "$tmp/early.log"; then
  ok "buckets declared ready too early: exit $rc, '$(grep -m1 -o "gradsync: bucket.*launch" "$tmp/early.log")'"
else bad "buckets declared ready too early: exit $rc"; tail -5 "$tmp/early.log"; fi
finish
