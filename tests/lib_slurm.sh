# tests/lib_slurm.sh: helpers of the Slurm tests (test_slurm.sh, test_cluster.sh); source it
# after lib.sh, with SLURM_CONF (and PATH) pointing at the test's cluster.
#   job_field ID FIELD            the value of FIELD in `scontrol show job ID`
#   wait_state ID SECONDS STATE.. wait until the job is in one of the states; prints it
#   n_train METRICS               the number of train lines of a metrics.jsonl
# (loss_gnorm and ckpt_sums are lib.sh's.)
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
