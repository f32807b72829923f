#!/usr/bin/python3
"""plot_trace.py: draw the timeline of one update from MPIFORMER_TRACE files (trace.h).

Usage: scripts/plot_trace.py PREFIX OUT.png [UPDATE]
  PREFIX   what MPIFORMER_TRACE was set to: reads PREFIX.rank0.json, PREFIX.rank1.json, ...
  UPDATE   which update to draw, counted from 0 (default: the last one, -1)

Per rank, three lanes: the compute (each stage backward, and Adam), the gradient buckets
in flight (one bar per bucket, from its launch to the poll that found it complete), and
the wait for the buckets still in flight after the backward (gradsync_finish). A bucket
bar that ends inside a backward bar moved while the rank computed. Also prints, per rank,
the update's backward time, its wait, and how many buckets completed before the wait.
Needs gnuplot (Debian's package); the JSON files also open in https://ui.perfetto.dev.
"""
import glob
import json
import subprocess
import sys
import tempfile


def spans(ev, name):
    out, t = [], None
    for e in ev:
        if e["name"] == name and e["ph"] == "B":
            t = e["ts"]
        elif e["name"] == name and e["ph"] == "E":
            out.append((t, e["ts"]))
    return out


def buckets(ev):
    start, out = {}, []
    for e in ev:
        if e["name"] != "grad bucket":
            continue
        if e["ph"] == "b":
            start[e["id"]] = (e["ts"], e.get("args", {}).get("bytes", 0))
        elif e["ph"] == "e" and e["id"] in start:
            t0, nb = start.pop(e["id"])
            out.append((t0, e["ts"], nb))
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    prefix, png = sys.argv[1], sys.argv[2]
    which = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    files = sorted(glob.glob(prefix + ".rank*.json"), key=lambda p: int(p.rsplit("rank", 1)[1][:-5]))
    if not files:
        sys.exit(f"plot_trace: no {prefix}.rank*.json")
    ranks = [json.load(open(p))["traceEvents"] for p in files]
    # each rank's update k: from the end of its previous Adam to the end of this one; the
    # plot spans the union (ranks on one host share the clock)
    n_upd = min(len(spans(ev, "adam")) for ev in ranks)
    if n_upd == 0:
        sys.exit("plot_trace: no update (adam span) in the trace")
    k = which if which >= 0 else n_upd + which

    def window(ev):
        adam = spans(ev, "adam")
        return (adam[k - 1][1] if k > 0 else min(e["ts"] for e in ev)), adam[k][1]

    lo = min(window(ev)[0] for ev in ranks)
    hi = max(window(ev)[1] for ev in ranks)
    tmp = tempfile.mkdtemp()
    rows = {"compute": [], "bucket": [], "wait": []}
    n = len(ranks)
    for r, ev in enumerate(ranks):
        y = 3 * (n - 1 - r)
        w_lo, w_hi = window(ev)
        inside = lambda s: s[1] > w_lo and s[0] < w_hi
        bwd = [s for s in spans(ev, "backward") if inside(s)]
        adam = [s for s in spans(ev, "adam") if inside(s)]
        wait = [s for s in spans(ev, "grad wait") if inside(s)]
        bk = [b for b in buckets(ev) if inside(b)]
        for s in bwd + adam:
            rows["compute"].append((s, y + 2))
        for i, b in enumerate(bk):
            h = 0.8 * (i % 8) / 8
            rows["bucket"].append(((b[0], b[1]), y + 1.1 + h))
        for s in wait:
            rows["wait"].append((s, y + 0.4))
        w0 = wait[0][0] if wait else w_hi
        done = sum(b[1] <= w0 for b in bk)
        print(f"rank {r}: backward {sum(s[1] - s[0] for s in bwd) / 1e3:.1f} ms, wait "
              f"{sum(s[1] - s[0] for s in wait) / 1e3:.1f} ms, {done} of {len(bk)} buckets "
              f"({sum(b[2] for b in bk) / 2**20:.1f} MiB) complete before the wait")
    for name, rs in rows.items():
        with open(f"{tmp}/{name}.dat", "w") as f:
            for (a, b), y in rs:
                x0, x1 = (a - lo) / 1e3, (b - lo) / 1e3
                f.write(f"{(x0 + x1) / 2} {y} {x0} {x1} {y - 0.35} {y + 0.35}\n")
            f.write("nan nan nan nan nan nan\n")
    labels = ", ".join(f'"rank {r}" {3 * (n - 1 - r) + 1}' for r in range(n))
    gp = f"""set terminal pngcairo size 1100,{160 + 90 * n} font "sans,10"
set output "{png}"
set title "update {k}: compute (backward, Adam), gradient buckets in flight, wait after the backward"
set xlabel "ms"
set ytics ({labels})
set yrange [-0.5:{3 * n}]
set key below horizontal
set style fill solid 0.8 noborder
plot "{tmp}/compute.dat" using 1:2:3:4:5:6 with boxxyerror lc rgb "#4477aa" title "compute", \\
     "{tmp}/bucket.dat" using 1:2:3:4:($2-0.05):($2+0.05) with boxxyerror lc rgb "#228833" title "bucket in flight", \\
     "{tmp}/wait.dat" using 1:2:3:4:5:6 with boxxyerror lc rgb "#ee6677" title "wait"
"""
    subprocess.run(["gnuplot"], input=gp, text=True, check=True)


if __name__ == "__main__":
    main()
