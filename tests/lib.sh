# tests/lib.sh: shared helpers of the shell tests (source it; it cds to the repo root).
#   BIN, PY            the mpiformer binary (MPIFORMER_BIN overrides) and Debian's python3
#   tmp                a fresh temporary folder, removed on exit
#   ok MSG / bad MSG   count a passed / failed check and print it
#   run NP ARGS...     mpirun -np NP bin/mpiformer ARGS (5-minute timeout)
#   losses METRICS     "step loss" of each train line of a metrics.jsonl, full precision
#   same A B TOL       two such lists have the same steps and losses within relative TOL
#   loss_gnorm METRICS "step loss gnorm" of each train line, as written
#   ckpt_sums CKPT     per-dataset checksums of a checkpoint (layout-independent: equal iff
#                      the tensors are)
#   finish             print "N passed, N failed" and exit non-zero on any failure
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
BIN=${MPIFORMER_BIN:-bin/mpiformer}
PY=/usr/bin/python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
tmp=$(mktemp -d "/tmp/mpiformer_$(basename "$0" .sh).XXXXXX")
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "  ok: $*"; }
bad() { failed=$((failed + 1)); echo "  FAIL: $*"; }
run() { local np=$1; shift; timeout 300 mpirun --oversubscribe -np "$np" "$BIN" "$@"; }
losses() {
  $PY -c '
import json, sys
for l in open(sys.argv[1]):
    o = json.loads(l)
    if o["type"] == "train": print(o["step"], repr(o["loss"]))' "$1"
}
same() {
  $PY -c '
import sys
a = [l.split() for l in open(sys.argv[1])]; b = [l.split() for l in open(sys.argv[2])]
tol = float(sys.argv[3])
if len(a) != len(b) or not a:
    print(f"    {len(a)} vs {len(b)} steps"); sys.exit(1)
worst = max(abs(float(x[1]) - float(y[1])) / abs(float(y[1])) for x, y in zip(a, b))
steps_equal = all(x[0] == y[0] for x, y in zip(a, b))
print(f"    {len(a)} steps, max relative difference {worst:.3g} (tolerance {tol:g})")
sys.exit(0 if steps_equal and worst <= tol else 1)' "$1" "$2" "$3"
}
loss_gnorm() {
  $PY -c '
import json, sys
for l in open(sys.argv[1]):
    o = json.loads(l)
    if o["type"] == "train": print(o["step"], repr(o["loss"]), repr(o["gnorm"]))' "$1"
}
ckpt_sums() {
  $PY -c '
import h5py, sys
f = h5py.File(sys.argv[1], "r")
f.visititems(lambda k, v: print(k, v.attrs["checksum"]) if isinstance(v, h5py.Dataset) else None)' "$1"
}
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}
