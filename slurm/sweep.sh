#!/usr/bin/env bash
# sweep.sh: submit several job files as one Slurm job array of slurm/train.sbatch.
#
#   slurm/sweep.sh [sbatch options] JOBFILE... [key=value ...]
#   slurm/sweep.sh jobs/study/*.conf
#   slurm/sweep.sh -N 2 --ntasks-per-node=16 --time=2:00:00 jobs/study/*.conf max_time=3600
#
# Array task i (SLURM_ARRAY_TASK_ID) trains the i-th job file, in runs/<its name>; the
# key=value arguments apply to every task. Options before the job files go to sbatch.
# MPIFORMER_SWEEP_MAX=N lets at most N tasks run at once (sbatch --array=...%N). Each task
# is requeued on its own when it is preempted or reaches its time limit (slurm/README.md).
# Prints the array job id on stdout (and "ID_i JOBFILE" for each task on stderr).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
opts=()
files=()
kv=()
# leading options go to sbatch; an option's value may be the next word ("-N 2") when that
# word is neither an option, a key=value nor a readable file
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do
  opts+=("$1")
  shift
  if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ] && [ ! -f "$1" ]; then
    opts+=("$1")
    shift
  fi
done
for a in "$@"; do
  case "$a" in
    *=*) kv+=("$a") ;;
    *)
      [ -r "$a" ] || { echo "sweep.sh: cannot read job file $a" >&2; exit 2; }
      files+=("$a") ;;
  esac
done
if [ ${#files[@]} -eq 0 ]; then
  echo "usage: slurm/sweep.sh [sbatch options] JOBFILE... [key=value ...]" >&2
  exit 2
fi
range="0-$((${#files[@]} - 1))"
[ -n "${MPIFORMER_SWEEP_MAX:-}" ] && range="$range%$MPIFORMER_SWEEP_MAX"
id=$(sbatch --parsable --array="$range" --output=slurm-%x-%A_%a.out \
  ${opts[@]+"${opts[@]}"} "$here/train.sbatch" "${files[@]}" ${kv[@]+"${kv[@]}"})
id=${id%%;*}
i=0
for f in "${files[@]}"; do
  echo "sweep: ${id}_$i $f" >&2
  i=$((i + 1))
done
echo "$id"
