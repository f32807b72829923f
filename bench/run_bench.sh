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
# The throughput table (issue 11) has, per shape and rank count, PyTorch fp32, PyTorch bf16
# autocast, mpiformer fp32 on OpenBLAS, fp32 on oneDNN and bf16 (gemm=onednn): tokens/s, the
# ratios to fp32-OpenBLAS and to PyTorch fp32, matmul GFLOP/s per rank against the engine's
# own one-core peak measured in the same run, the share of the step outside matmuls, the
# communication share and the ISA oneDNN picked. It runs with OPENBLAS_CORETYPE as set
# (Haswell when unset), then once more with OPENBLAS_CORETYPE unset in those commands only.
# Usage: bench/run_bench.sh [STEPS]   (BUILD=build by default). Absolute numbers are noisy
# on a shared machine: compare the ratios, which come from back-to-back runs.
# Reduced runs (PyTorch's bf16 autocast is emulated and slow on CPUs without AVX512-BF16):
# BENCH_SHAPES="small" BENCH_RANKS="1" limit the throughput tables; BENCH_THROUGHPUT_ONLY=1
# stops after them.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
STEPS=${1:-3}
SHAPES=${BENCH_SHAPES:-small base}
RANKS=${BENCH_RANKS:-1 2}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-Haswell}
# PyTorch's bf16 autocast without AVX512-BF16 or AMX is emulated and about 20x slower than its
# fp32 (docs/BENCH.md): one timed step after the warm-up there, to keep make bench bounded
TORCH_BF16_STEPS=$STEPS
grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo || TORCH_BF16_STEPS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
PY=/usr/bin/python3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cpu flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|amx|f16c)' | sort -u | xargs)"
echo "batch 64 sentences x 32 tokens per rank (source and target), $STEPS timed steps after one warm-up ($TORCH_BF16_STEPS for PyTorch bf16)"
echo
# The throughput table of issue 11: per shape and rank count, PyTorch fp32, PyTorch bf16
# autocast, and mpiformer fp32 on OpenBLAS, fp32 on oneDNN and bf16 (on oneDNN; emulated
# where the CPU lacks bf16 instructions). $1: a title; the rest: a command prefix for every
# run (env -u OPENBLAS_CORETYPE for the second table), none for the first.
throughput() {
  local title=$1 tag=$2
  shift 2
  local shape np
  for shape in $SHAPES; do
    for np in $RANKS; do
      "$@" env MPIFORMER_GEMM=openblas MPIFORMER_PRECISION=fp32 mpirun --oversubscribe -np $np \
        "$BUILD/bench/bench_model" $shape 64 32 "$STEPS" > "$out/${tag}_ob32_${shape}_$np.json"
      "$@" env MPIFORMER_GEMM=onednn MPIFORMER_PRECISION=fp32 mpirun --oversubscribe -np $np \
        "$BUILD/bench/bench_model" $shape 64 32 "$STEPS" > "$out/${tag}_dn32_${shape}_$np.json"
      "$@" env MPIFORMER_GEMM=onednn MPIFORMER_PRECISION=bf16 mpirun --oversubscribe -np $np \
        "$BUILD/bench/bench_model" $shape 64 32 "$STEPS" > "$out/${tag}_dn16_${shape}_$np.json"
      "$@" env OMP_NUM_THREADS=$np $PY bench/bench_torch.py $shape $np 64 32 "$STEPS" fp32 \
        > "$out/${tag}_pt32_${shape}_$np.json"
      "$@" env OMP_NUM_THREADS=$np $PY bench/bench_torch.py $shape $np 64 32 "$TORCH_BF16_STEPS" bf16 \
        > "$out/${tag}_pt16_${shape}_$np.json"
    done
  done
  echo "$title"
  $PY - "$out" "$tag" "$SHAPES" "$RANKS" <<'PY'
import json, sys
d, tag, shapes, ranks = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
def flops(shape, B=64, T=32):  # bench_model.c's step_flops: the matmuls of one step
    dm, F, H, V, L = (256, 1024, 4, 8000, 3) if shape == "small" else (512, 1024, 4, 8000, 6)
    n = B * T; lin = 2 * n * dm * dm; attn = 2 * 2 * B * H * T * T * (dm / H); ffn = 2 * 2 * n * dm * F
    return 3 * (L * (4 * lin + attn + ffn) + L * (8 * lin + 2 * attn + ffn) + 2 * n * dm * V)
rows = [("pt32", "PyTorch fp32"), ("pt16", "PyTorch bf16 autocast"), ("ob32", "fp32 OpenBLAS"),
        ("dn32", "fp32 oneDNN"), ("dn16", "bf16 (oneDNN)")]
print(f"  {'shape':6} {'ranks':>5} {'engine':22} {'tok/s':>8} {'x OB32':>6} {'x PT32':>6} "
      f"{'GFLOP/s/rank':>12} {'peak':>6} {'of peak':>7} {'outside mm':>10} {'comm':>5}  ISA")
for shape in shapes:
    for np in ranks:
        r = {k: json.load(open(f"{d}/{tag}_{k}_{shape}_{np}.json")) for k, _ in rows}
        ob, pt = r["ob32"]["tokens_per_s"], r["pt32"]["tokens_per_s"]
        for k, name in rows:
            o = r[k]
            if k.startswith("pt"):  # PyTorch: the same matmul FLOPs over its step, per thread
                g = flops(shape) * int(np) / o["step_s"] / 1e9 / int(np)
                tail = f"{g:12.1f} {'-':>6} {'-':>7} {'-':>10} {'-':>5}  -"
            else:
                tail = (f"{o['matmul_gflops_per_rank']:12.1f} {o['engine_peak_gflops']:6.1f} "
                        f"{o['fraction_of_engine_peak']:7.2f} {o['outside_matmul_fraction']:10.3f} "
                        f"{o['comm_fraction']:5.3f}  {o['onednn_isa'] if o['gemm'] == 'onednn' else 'OpenBLAS'}")
            t = o["tokens_per_s"]
            print(f"  {shape:6} {np:>5} {name:22} {t:8.1f} {t / ob:6.2f} {t / pt:6.2f} {tail}")
PY
}
throughput "throughput, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE}:" ct
echo
throughput "the same with OPENBLAS_CORETYPE unset (OpenBLAS picks its kernels for this CPU itself, as on a user's machine):" env env -u OPENBLAS_CORETYPE
[ "${BENCH_THROUGHPUT_ONLY:-0}" = 1 ] && exit 0
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
