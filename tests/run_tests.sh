#!/usr/bin/env bash
# Run every test: each compiled tests/test_*.c under mpirun with the rank counts its
# "// NP: 1 2" line names (default 1), then every tests/test_*.sh script. Prints one
# line per run and the closing "N passed, N failed" (counted in test runs).
# test_debug_build.sh builds a DEBUG=1 tree beside $BUILD and runs the layout tests in it
# (WERROR from the environment is passed on to that build).
# Usage: tests/run_tests.sh [PATTERN]   (only tests whose name contains PATTERN)
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
pat=${1:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
passed=0; failed=0; failures=()
log=$(mktemp -d)
run() {  # name, command...
  local name=$1; shift
  local t0=$SECONDS
  if timeout 900 "$@" >"$log/out" 2>&1; then
    passed=$((passed + 1)); printf '  ok    %-40s %4ds\n' "$name" $((SECONDS - t0))
  else
    failed=$((failed + 1)); failures+=("$name")
    printf '  FAIL  %-40s %4ds\n' "$name" $((SECONDS - t0))
    tail -n 40 "$log/out" | sed 's/^/        /'
  fi
}
for src in tests/test_*.c; do
  name=$(basename "$src" .c)
  [[ -n "$pat" && "$name" != *"$pat"* ]] && continue
  nps=$(sed -n 's|^// NP: *||p' "$src" | head -1); nps=${nps:-1}
  for np in $nps; do
    run "$name (np=$np)" mpirun --oversubscribe -np "$np" "$BUILD/tests/$name"
  done
done
for sh in tests/test_*.sh; do
  [ -e "$sh" ] || continue
  name=$(basename "$sh" .sh)
  [[ -n "$pat" && "$name" != *"$pat"* ]] && continue
  run "$name" env BUILD="$BUILD" bash "$sh"
done
rm -rf "$log"
echo
[ ${#failures[@]} -gt 0 ] && printf 'failed: %s\n' "${failures[@]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
