#!/usr/bin/env bash
# Plot a run's training loss and validation BLEU against wall time (gnuplot, PNG).
# Usage: scripts/plot_run.sh RUN_DIR   -> RUN_DIR/curves.png
# Steps repeated after a resume are drawn once, from the newest lines (as report.py).
# PLOT_RUN_KEEP=DIR keeps the gnuplot tables (train.dat, valid.dat) in DIR (tests).
set -euo pipefail
run=$1
m=$run/metrics.jsonl
[ -f "$m" ] || { echo "plot_run: $m not found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# one whitespace table per line type: wall step loss|bleu
/usr/bin/python3 - "$m" "$tmp" <<'PY'
import json, sys
src, out = sys.argv[1], sys.argv[2]
tr, va = open(out + "/train.dat", "w"), open(out + "/valid.dat", "w")
# a resumed run repeats the steps after its checkpoint: keep the newest lines (report.py)
kept = []
for line in open(src):
    o = json.loads(line)
    if o.get("type") == "start" and o.get("resumed"):
        kept = [k for k in kept if k.get("step", 0) <= o.get("step", 0)]
    kept.append(o)
for o in kept:
    if o.get("type") == "train":
        tr.write(f"{o['wall']} {o['step']} {o['loss']}\n")
    elif o.get("type") == "valid":
        va.write(f"{o['wall']} {o['step']} {o['loss']} {o.get('bleu', 0)}\n")
PY
[ -n "${PLOT_RUN_KEEP:-}" ] && cp "$tmp/train.dat" "$tmp/valid.dat" "$PLOT_RUN_KEEP/"
gnuplot <<GP
set terminal pngcairo size 1000,450 font ",10"
set output "$run/curves.png"
set multiplot layout 1,2 title "$(basename "$run")"
set xlabel "wall time (s)"
set ylabel "loss"
set grid
plot "$tmp/train.dat" using 1:3 with lines title "train loss", \
     "$tmp/valid.dat" using 1:3 with linespoints title "valid loss"
set ylabel "BLEU"
plot "$tmp/valid.dat" using 1:4 with linespoints title "valid BLEU"
unset multiplot
GP
echo "wrote $run/curves.png"
