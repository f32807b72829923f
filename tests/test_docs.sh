#!/usr/bin/env bash
# test_docs.sh: the documentation is current and speaks of this repository alone:
#  - docs/CONFIG.md holds exactly the key table that `mpiformer keys` prints;
#  - README.md, docs/, data_prep/, slurm/, jobs/ and scripts/ cite no path outside the
#    repository (/work/..., ../shared/...), and every Markdown file they name by
#    NAME.md exists in the repository (report.md, which `mpiformer report` writes into a
#    run folder, aside): a user of a clone has nothing else.
set -u
cd "$(dirname "$0")/.."
BIN=${MPIFORMER_BIN:-bin/mpiformer}
passed=0; failed=0
ok() { passed=$((passed + 1)); echo "  ok: $*"; }
bad() { failed=$((failed + 1)); echo "  FAIL: $*"; }
if diff <("$BIN" keys) <(grep '^|' docs/CONFIG.md) >/dev/null; then
  ok "docs/CONFIG.md matches 'mpiformer keys'"
else
  bad "docs/CONFIG.md is stale: regenerate its table with bin/mpiformer keys"
fi

# the files a user reads; git grep sees the tracked ones (and works in a plain copy
# through --no-index when there is no .git)
where=(README.md docs data_prep slurm jobs scripts)
if git rev-parse --git-dir >/dev/null 2>&1; then gg=(git grep -n -I); else gg=(git grep --no-index -n -I); fi
outside=$("${gg[@]}" -E '/work/|\.\./shared' -- "${where[@]}")
if [ -z "$outside" ]; then
  ok "no path outside the repository (/work/, ../shared) in ${where[*]}"
else
  bad "paths outside the repository (state the facts instead):"; echo "$outside" | head -20 | sed 's/^/      /'
fi
have=$( (git ls-files '*.md' 2>/dev/null || find . -name '*.md') | sed 's|.*/||' | sort -u)
missing=""
while IFS= read -r hit; do
  name=${hit##*:}; base=${name##*/}
  [ "$base" = report.md ] && continue
  grep -qxF "$base" <<<"$have" || missing+="$hit"$'\n'
done < <("${gg[@]}" -o -E '[A-Za-z0-9_./-]*[A-Za-z0-9_]\.md\b' -- "${where[@]}")
if [ -z "$missing" ]; then
  ok "every NAME.md cited in ${where[*]} is a file of the repository"
else
  bad "cited Markdown files that the repository does not have:"; printf '%s' "$missing" | head -20 | sed 's/^/      /'
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
