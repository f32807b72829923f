#!/usr/bin/env bash
# make report: runs/study/*/metrics.jsonl and runs/gradnorm/*.jsonl -> runs/report.md and
# PNG plots in runs/ (BLEU / accuracy against wall time and steps, validation and training
# loss, lr schedules, gradient norms per layer and against depth). scripts/report.py
# writes the markdown, the data files and runs/report/plots.gp; gnuplot draws them.
# Usage: scripts/report.sh [RUNS_DIR (default runs)] [report.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
[ $# -gt 0 ] && shift
/usr/bin/python3 scripts/report.py --runs "$RUNS" "$@"
gnuplot "$RUNS/report/plots.gp"
ls "$RUNS"/*.png 2>/dev/null | sed 's/^/wrote /'
