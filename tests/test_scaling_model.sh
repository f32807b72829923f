#!/usr/bin/env bash
# test_scaling_model.sh: the pieces of docs/SCALING.md that can be checked without the
# in-box cluster (seconds, not minutes):
#  - scripts/scaling_model.py --fit recovers alpha and beta from a synthetic bench_comm file
#    made with known values (1% noise);
#  - bench_comm on 2 ranks (shared memory) prints one well-formed JSON line for every op and
#    size, and the Iallreduce-under-compute lines;
#  - scaling_model.py on a synthetic measurement folder: the 2-rank dp prediction is the
#    compute plus alpha + bytes / beta of the all-reduce fit at N = 2 (within 1% of a point
#    made that way from the data's alpha and beta, which carry 1% noise), and it writes its tables and both PNGs.
set -u
source "$(dirname "$0")/lib.sh"
BUILD=${BUILD:-build}
model=scripts/scaling_model.py

# synthetic bench_comm lines: op alpha_s beta_Bps -> 4 KiB .. 128 MiB, x4, noise +-1%
synth() {
  $PY - "$@" <<'PY'
import json, sys
args = sys.argv[1:]
for i in range(0, len(args), 3):
    op, a, b = args[i], float(args[i + 1]), float(args[i + 2])
    n, k = 4096, 0
    while n <= 128 << 20:
        t = (a + n / b) * (1 + 0.01 * (-1) ** k)
        print(json.dumps({"op": op, "bytes": n, "seconds": t, "ranks": 2, "reps": 3}))
        n, k = n * 4, k + 1
PY
}

echo "alpha-beta fit of synthetic data"
synth allreduce 50e-6 1.25e9 p2p 20e-6 2.5e8 >"$tmp/comm.jsonl"
if $PY $model --fit "$tmp/comm.jsonl" >"$tmp/fit.jsonl" && $PY - "$tmp/fit.jsonl" <<'PY'
import json, sys
want = {"allreduce": (50e-6, 1.25e9), "p2p": (20e-6, 2.5e8)}
got = {o["op"]: o for o in map(json.loads, open(sys.argv[1]))}
bad = 0
for op, (a, b) in want.items():
    g = got[op]
    ea, eb = abs(g["alpha_s"] / a - 1), abs(g["beta_Bps"] / b - 1)
    print(f"    {op}: alpha {g['alpha_s'] * 1e6:.2f} us (want {a * 1e6:g}), beta "
          f"{g['beta_Bps'] / 1e9:.4f} GB/s (want {b / 1e9:g}), worst residual {g['worst_rel_residual']:.3f}")
    bad += ea > 0.1 or eb > 0.02
sys.exit(bad)
PY
then ok "alpha within 10% and beta within 2% of the values the data was made with"
else bad "the fit did not recover alpha and beta"; fi

echo "bench_comm on 2 ranks"
if timeout 120 mpirun --oversubscribe -np 2 "$BUILD/bench/bench_comm" 4K 1M all,overlap >"$tmp/bc.jsonl" 2>"$tmp/bc.err" &&
  $PY - "$tmp/bc.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
sizes = [4096 * 4**k for k in range(5)]
ops = ["allreduce", "reduce_scatter", "allgather", "rs_ag", "p2p"]
have = {(o["op"], o["bytes"]) for o in rows if o.get("ranks") == 2 and o.get("seconds", -1) > 0}
missing = [(op, n) for op in ops for n in sizes if (op, n) not in have]
ov = [o for o in rows if o["op"] == "iallreduce_overlap" and o["wait_s"] >= 0 and o["compute_s"] > 0]
print(f"    {len(rows)} lines; missing {missing}; {len(ov)} overlap lines")
sys.exit(bool(missing) or len(ov) != 4 or len(rows) != len(ops) * len(sizes) + 4)
PY
then ok "one JSON line per op and size (5 ops x 5 sizes) and 4 Iallreduce-under-compute lines"
else bad "bench_comm output: $(head -3 "$tmp/bc.err")"; fi

echo "the model on a synthetic measurement folder"
d="$tmp/meas"
mkdir -p "$d"
synth allreduce 60e-6 1.0e8 reduce_scatter 40e-6 2.0e8 allgather 40e-6 2.0e8 rs_ag 80e-6 1.0e8 \
  p2p 30e-6 1.2e8 >"$d/comm_1gbit.jsonl"
synth allreduce 5e-6 2e9 reduce_scatter 3e-6 4e9 allgather 3e-6 4e9 rs_ag 6e-6 2e9 p2p 2e-6 8e9 \
  >"$d/comm_shm.jsonl"
line() { printf '{"shape":"base","ranks":%d,"tokens_per_s":%s,"step_s":%s,"comm_fraction":%s,"sgemm_1core_gflops":80}\n' "$@"; }
line 1 341.3 6.0 0 >"$d/compute_alone.jsonl"
line 1 341.3 6.0 0 >"$d/compute_pair_1gbit.jsonl"
line 1 341.3 6.0 0 >>"$d/compute_pair_1gbit.jsonl"
# base: 35,641,344 parameters, 142,565,376 gradient bytes; dp=2: 6 s + alpha + bytes / beta
t=$($PY -c 'print(6.0 + 60e-6 + 142565376 / 1.0e8)')
line 2 "$($PY -c "print(4096 / $t)")" "$t" 0.2 >"$d/step_1gbit_overlap0.jsonl"
if $PY $model "$d" >"$tmp/model.out" 2>&1 && grep -qE 'dp=2 1gbit overlap=0: .* [-+]0\.[0-9]%: within 15%' "$tmp/model.out"; then
  ok "$(grep 'dp=2 1gbit overlap=0' "$tmp/model.out" | xargs)"
else bad "model: $(tail -5 "$tmp/model.out")"; fi
if [ -s "$d/model/scaling.png" ] && [ -s "$d/model/scaling_predict.png" ] &&
  grep -q 'scaling_model:begin pred_wmt14_100' "$d/model/tables.txt"; then
  ok "tables.txt, scaling.png ($(stat -c %s "$d/model/scaling.png") bytes), scaling_predict.png"
else bad "missing outputs: $(ls "$d/model")"; fi
finish
