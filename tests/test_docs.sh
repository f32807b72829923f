#!/usr/bin/env bash
# test_docs.sh: the documentation that is generated from the code is current:
# docs/CONFIG.md holds exactly the key table that `mpiformer keys` prints.
set -u
cd "$(dirname "$0")/.."
BIN=${MPIFORMER_BIN:-bin/mpiformer}
passed=0; failed=0
if diff <("$BIN" keys) <(grep '^|' docs/CONFIG.md) >/dev/null; then
  passed=$((passed + 1)); echo "  ok: docs/CONFIG.md matches 'mpiformer keys'"
else
  failed=$((failed + 1)); echo "  FAIL: docs/CONFIG.md is stale: regenerate its table with bin/mpiformer keys"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
