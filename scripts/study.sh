#!/usr/bin/env bash
# make study: the small-scale warm-up study of Xiong et al. (2020) on 2 CPU cores.
#   1. data: every job's `data` file; data/bible/es-en.h5 (prepare_bible.sh) and
#      data/bible/kjv-web-pairs.h5 (paraphrase.py) are built when missing
#   2. gradient norms at initialization (scripts/gradnorm_study.sh -> runs/gradnorm/)
#   3. translation runs jobs/study/mt-*.conf, one after another, out=runs/study/<name>
#   4. classification: the masked-LM runs jobs/study/mlm-*.conf, then jobs/study/clf-*.conf
#      (which start from the masked-LM encoder of their norm), when their data exist
#   5. test-split evaluation of each finished run (beam 5) -> runs/study/<name>/test.json
#   6. a short summary (scripts/report.py --summary); `make report` writes the plots
# Every run uses resume=auto: an interrupted study continues where it stopped, and a
# finished run (its metrics.jsonl ends with "end" or "diverged") is not run again.
# Environment: NP (ranks, 2), BIN (bin), STUDY_RUNS (space-separated names to run, default
# all), STUDY_GRADNORM=0 (skip step 2), STUDY_TEST=0 (skip step 5), TEST_BEAM (5),
# STUDY_JOBS (the job folder, jobs/study), STUDY_OUT (the runs folder, runs: the runs go
# to STUDY_OUT/study/<name>, the gradient norms to STUDY_OUT/gradnorm). tests/test_study.sh
# runs the whole script on tiny job files.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
NP=${NP:-2}
BIN=${BIN:-bin}
export NP BIN
MPIRUN=(mpirun --oversubscribe -np "$NP")
PY=/usr/bin/python3
JOBS=${STUDY_JOBS:-jobs/study}
OUT_ROOT=${STUDY_OUT:-runs}
STUDY=$OUT_ROOT/study
mkdir -p "$STUDY"

# conf_value FILE KEY: the value of `KEY = value` in a job file (empty if absent)
conf_value() {
  sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*\([^#]*\).*/\1/p" "$1" | tail -n 1 | sed 's/[[:space:]]*$//'
}

# finished DIR: true when the run's last metrics line is "end" or "diverged"
finished() {
  [ -f "$1/metrics.jsonl" ] && tail -n 1 "$1/metrics.jsonl" | grep -q '"type":"\(end\|diverged\)"'
}

# run_job CONF: train one job file into runs/study/<name> (resumes; skips a finished run)
run_job() {
  local conf=$1 name
  name=$(basename "$conf" .conf)
  if [ -n "${STUDY_RUNS:-}" ] && ! grep -qw -- "$name" <<< "$STUDY_RUNS"; then return 0; fi
  if finished "$STUDY/$name"; then
    echo "== $name: finished earlier ($STUDY/$name/metrics.jsonl), not run again"
    return 0
  fi
  echo "== $name: $conf -> $STUDY/$name ($(date '+%H:%M:%S'), load $(cut -d' ' -f1-3 /proc/loadavg))"
  "${MPIRUN[@]}" "$BIN/mpiformer" train "$conf" out="$STUDY/$name" resume=auto \
    2>&1 | tee -a "$STUDY/$name.log" | grep -E '^(valid|diverged|mpiformer)' || true
  uptime >> "$STUDY/$name.load"
}

# every job's data first (the encoder-only gradient norms read the classification pairs)
for conf in "$JOBS"/*.conf; do
  data=$(conf_value "$conf" data)
  [ -z "$data" ] || [ -f "$data" ] && continue
  case "$data" in
    */es-en.h5)
      echo "== data: $data (data_prep/prepare_bible.sh)"
      data_prep/prepare_bible.sh "$(dirname "$data")" 8000 ;;
    */kjv-web-pairs.h5)
      echo "== data: $data (data_prep/paraphrase.py)"
      [ -f "$(dirname "$data")/es-en.h5" ] || data_prep/prepare_bible.sh "$(dirname "$data")" 8000
      $PY data_prep/paraphrase.py "$(dirname "$data")" --out "$data" ;;
  esac
  if [ ! -f "$data" ]; then
    echo "study: error: $conf reads $data, which does not exist and is not one this script builds" >&2
    exit 1
  fi
done

if [ "${STUDY_GRADNORM:-1}" != 0 ]; then
  echo "== gradient norms at initialization (scripts/gradnorm_study.sh)"
  GN_JOBS=$JOBS GN_OUT=$OUT_ROOT/gradnorm scripts/gradnorm_study.sh
fi

for conf in "$JOBS"/mt-*.conf; do
  [ -f "$conf" ] && run_job "$conf"
done

# masked-LM first: the classifiers start from its encoder (init_from in clf-*.conf)
for conf in "$JOBS"/mlm-*.conf "$JOBS"/clf-*.conf; do
  [ -f "$conf" ] && run_job "$conf"
done

if [ "${STUDY_TEST:-1}" != 0 ]; then
  for conf in "$JOBS"/mt-*.conf "$JOBS"/clf-*.conf "$JOBS"/mlm-*.conf; do
    [ -f "$conf" ] || continue
    name=$(basename "$conf" .conf)
    dir=$STUDY/$name
    if [ -n "${STUDY_RUNS:-}" ] && ! grep -qw -- "$name" <<< "$STUDY_RUNS"; then continue; fi
    [ -d "$dir/ckpt" ] && finished "$dir" || continue
    [ -s "$dir/test.json" ] && continue
    echo "== $name: test split, beam ${TEST_BEAM:-5}"
    if "${MPIRUN[@]}" "$BIN/mpiformer" eval "$conf" out="$dir" ckpt="$dir/ckpt" split=test \
      beam="${TEST_BEAM:-5}" 2> "$dir/test.err" | grep '^{' | tail -n 1 > "$dir/test.json.tmp"; then
      mv "$dir/test.json.tmp" "$dir/test.json"
      cat "$dir/test.json"
    else
      rm -f "$dir/test.json.tmp"
      echo "   eval failed: $dir/test.err"
    fi
  done
fi

echo "== summary (make report writes runs/report.md and the plots)"
$PY scripts/report.py --runs "$OUT_ROOT" --summary
