#!/usr/bin/env bash
# make bench: figures, not pass/fail. Prints a table of
#  - training tokens/s of mpiformer for `small` and `base` on 1 and 2 ranks (one BLAS
#    thread each), next to PyTorch 1.13 training the same shape on the same batch with
#    the same number of threads, and the ratio;
#  - the matmul GFLOP/s achieved per rank and its fraction of the single-core sgemm rate
#    measured in the same run;
#  - checkpoint write/read MB/s of a base-sized model with Adam state on 2 ranks, next to
#    a plain sequential write of the same bytes (bench_ckpt);
#  - tensor parallelism: tokens/s, communication share and memory per rank of base on 2
#    ranks as dp=2, tp=2 1x2 and tp=2 2x1 (bench_model's TP_GRID argument);
#  - the tensor-parallel crossover: one sgemm on one rank against dmat_gemm (ScaLAPACK
#    psgemm) on a 1x2 and a 2x1 grid, square and Transformer shapes (bench_gemm, 2 ranks);
#  - the GFLOP/s of the local matmul seam per engine and precision (OpenBLAS and oneDNN, fp32
#    and bf16) on base's linear-layer shapes, one thread, and the ISA oneDNN picked
#    (bench_engines);
#  - the pipeline bubble of pp=2 for M = 1, 4, 8 micro-batches against the theoretical
#    (S-1)/(M+S-1), and tokens/s of `base` with pp=2 against dp=2 and tp=2 on 2 ranks
#    (bench_pp).
# Usage: bench/run_bench.sh [STEPS]   (BUILD=build by default). Absolute numbers are noisy
# on a shared machine: compare the ratios, which come from back-to-back runs.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
STEPS=${1:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
PY=/usr/bin/python3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "batch 64 sentences x 32 tokens per rank (source and target), $STEPS timed steps after one warm-up"
echo
for shape in small base; do
  for np in 1 2; do
    mpirun --oversubscribe -np $np "$BUILD/bench/bench_model" $shape 64 32 "$STEPS" > "$out/ours_${shape}_$np.json"
    OMP_NUM_THREADS=$np $PY bench/bench_torch.py $shape $np 64 32 "$STEPS" > "$out/torch_${shape}_$np.json"
  done
done
$PY - "$out" <<'PY'
import json, sys, glob
d = sys.argv[1]
print(f"{'shape':6} {'cores':>5} {'mpiformer tok/s':>16} {'PyTorch tok/s':>14} {'ratio':>6} "
      f"{'GFLOP/s/rank':>12} {'sgemm 1 core':>12} {'fraction':>8} {'comm':>6}")
for shape in ("small", "base"):
    for np in (1, 2):
        o = json.load(open(f"{d}/ours_{shape}_{np}.json"))
        t = json.load(open(f"{d}/torch_{shape}_{np}.json"))
        print(f"{shape:6} {np:5d} {o['tokens_per_s']:16.1f} {t['tokens_per_s']:14.1f} "
              f"{o['tokens_per_s'] / t['tokens_per_s']:6.2f} {o['matmul_gflops_per_rank']:12.1f} "
              f"{o['sgemm_1core_gflops']:12.1f} {o['fraction_of_sgemm']:8.2f} {o['comm_fraction']:6.3f}")
PY
echo
echo "Adam state per rank for base on 2 ranks, zero=0 against zero=1 (ZeRO-1 sharding):"
for z in 0 1; do
  mpirun --oversubscribe -np 2 "$BUILD/bench/bench_model" base 8 32 1 $z |
    $PY -c 'import json,sys; o=json.load(sys.stdin); print("  zero=%d: Adam state %.1f MiB/rank, parameters %.1f MiB/rank" % (o["zero"], o["adam_state_mib_per_rank"], o["params_mib_per_rank"]))'
done
echo
echo "checkpoint I/O, 2 ranks, about the size of base with Adam state (3 x 35.6M floats = 427 MB):"
mpirun --oversubscribe -np 2 "$BUILD/bench/bench_ckpt" 427 "$out" 1
echo
echo "tensor parallelism, base, 2 ranks, 64 x 32 tokens per replica: dp=2 (tp=1) against tp=2"
echo "(comm: share of rank 0's step inside MPI calls, ScaLAPACK's included, waiting counted)"
for grid in 1x1 1x2 2x1; do
  mpirun --oversubscribe -np 2 "$BUILD/bench/bench_model" base 64 32 "$STEPS" 0 $grid |
    $PY -c 'import json,sys; o=json.load(sys.stdin); print("  %-5s %s: %7.1f tok/s, comm %.3f, parameters %.1f MiB/rank, Adam state %.1f MiB/rank" % (o["tp_grid"], "dp=2" if o["tp_grid"] == "1x1" else "tp=2", o["tokens_per_s"], o["comm_fraction"], o["params_mib_per_rank"], o["adam_state_mib_per_rank"]))'
done
echo
echo "dmat_gemm on a 2-rank TP grid (psgemm, 1x2 and 2x1) against one sgemm on one rank:"
mpirun --oversubscribe -np 2 "$BUILD/bench/bench_gemm"
echo
echo "local matmul engines (gemm=openblas|onednn x precision=fp32|bf16), base linear-layer shapes, one thread:"
mpirun -np 1 "$BUILD/bench/bench_engines" | sed 's/^/  /'
echo
echo "pipeline bubble, pp=2 (small, micro-batches of 8x32): 1 - compute / (stages x wall), against (S-1)/(M+S-1)"
mpirun --oversubscribe -np 2 "$BUILD/bench/bench_pp" bubble small 8 32 "$STEPS" |
  $PY -c 'import json,sys
for l in sys.stdin:
    o = json.loads(l)
    print("  M=%d: measured %.3f, theory %.3f, update %.2f s, stage compute %s s" % (o["M"], o["bubble_measured"], o["bubble_theory"], o["update_s"], o["stage_compute_s"]))'
echo
echo "base on 2 ranks, 1024 target tokens per update: dp=2, tp=2 (1x2), pp=2 (4 micro-batches of 8x32)"
for lay in "2 1 1 16 32 1" "1 1 2 32 32 1" "1 2 1 8 32 4"; do
  mpirun --oversubscribe -np 2 "$BUILD/bench/bench_pp" tput base $lay "$STEPS"
done | $PY -c 'import json,sys
for l in sys.stdin:
    o = json.loads(l)
    print("  dp=%d pp=%d tp=%d: %7.1f tok/s, %.2f s/update, parameters %.1f MiB/rank" % (o["dp"], o["pp"], o["tp"], o["tokens_per_s"], o["step_s"], o["params_mib_per_rank"]))'
