# tests/lib_slurm.sh: helpers of the Slurm tests (test_slurm.sh, test_cluster.sh); source it
# after lib.sh, with SLURM_CONF (and PATH) pointing at the test's cluster.
#   job_field ID FIELD            the value of FIELD in `scontrol show job ID`
#   wait_state ID SECONDS STATE.. wait until the job is in one of the states; prints it
#   n_train METRICS               the number of train lines of a metrics.jsonl
#   loss_gnorm METRICS            "step loss gnorm" of each train line, as written
#   ckpt_sums CKPT                per-dataset checksums of a checkpoint (layout-independent:
#                                 equal iff the tensors are)
job_field() { scontrol -o show job "$1" 2>/dev/null | grep -o " $2=[^ ]*" | head -1 | cut -d= -f2-; }
wait_state() {
  local id=$1 t=$2 s=""
  shift 2
  for _ in $(seq $((t * 4))); do
    s=$(job_field "$id" JobState)
    for want in "$@"; do [ "$s" = "$want" ] && { echo "$s"; return 0; }; done
    sleep 0.25
  done
  echo "$s"
  return 1
}
n_train() { grep -c '"type":"train"' "$1" 2>/dev/null || true; }
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
