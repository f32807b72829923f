#!/usr/bin/python3
"""report.py: the study's numbers from runs/ (make report; scripts/report.sh).

Reads runs/study/*/metrics.jsonl (+ config.conf, test.json) and runs/gradnorm/*.jsonl and
writes runs/report.md, whitespace data files and a gnuplot script under runs/report/.
scripts/report.sh runs gnuplot on that script (PNG plots next to report.md). It does not
train or evaluate anything. With --summary it only prints the per-run table to stdout.
Standard library only; run it with /usr/bin/python3.

Usage: report.py [--runs DIR] [--summary] [--bleu-targets 1,2,5] [--acc-targets 0.6,0.7]
                 [--loss-targets 6,5.5,5]
"""
import argparse
import glob
import json
import math
import os
import sys

BLEU_TARGETS = [0.5, 1, 2, 3, 5, 10, 15, 20, 25, 30]
ACC_TARGETS = [0.55, 0.6, 0.7, 0.8, 0.9, 0.95]


def read_jsonl(path):
    """The JSON objects of a JSON-lines file; unreadable lines are skipped."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def read_conf(path):
    """key = value pairs of a job / resolved config file."""
    conf = {}
    if not os.path.exists(path):
        return conf
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            k, v = line.split("=", 1)
            conf[k.strip()] = v.strip()
    return conf


def load_run(d):
    """One run directory -> dict with train/valid lines (resumes deduplicated)."""
    lines = read_jsonl(os.path.join(d, "metrics.jsonl"))
    # a resumed run repeats the steps after its checkpoint: keep the newest lines
    kept = []
    for o in lines:
        if o.get("type") == "start" and o.get("resumed"):
            s = o.get("step", 0)
            kept = [k for k in kept if k.get("step", 0) <= s]
        kept.append(o)
    run = {
        "name": os.path.basename(d.rstrip("/")),
        "dir": d,
        "train": [o for o in kept if o.get("type") == "train"],
        "valid": [o for o in kept if o.get("type") == "valid"],
        "diverged": next((o for o in kept if o.get("type") == "diverged"), None),
        "end": next((o for o in reversed(kept) if o.get("type") == "end"), None),
        "conf": read_conf(os.path.join(d, "config.conf")),
        "test": None,
    }
    tp = os.path.join(d, "test.json")
    if os.path.exists(tp):
        t = read_jsonl(tp)
        run["test"] = t[-1] if t else None
    run["kind"] = "acc" if any("accuracy" in v for v in run["valid"]) else "bleu"
    return run


def schedule(c):
    """A short description of the run's lr schedule from its resolved config."""
    s = c.get("lr_scheduler", "?")
    w = int(float(c.get("warmup_steps", "0") or 0))
    ds = int(float(c.get("decay_start", "0") or 0))
    if s == "inverse_sqrt":
        if w > 0:
            return f"warm-up {w}, inv-sqrt"
        if ds > 0:
            return f"no warm-up, hold to {ds}, inv-sqrt"
        return "no warm-up, lr/sqrt(t)"
    if s == "step":
        return f"{'warm-up %d, ' % w if w else ''}x{c.get('lr_decay_factor')} at epochs {c.get('lr_decay_epochs')}"
    return s + (f", warm-up {w}" if w else "")


def metric(run):
    return "accuracy" if run["kind"] == "acc" else "bleu"


def first_reach(run, target):
    """(wall, step) of the first validation at or above target, or None."""
    m = metric(run)
    for v in run["valid"]:
        x = v.get(m)
        if x is not None and x >= target:
            return v["wall"], v["step"]
    return None


def first_below(run, target):
    """(wall, step) of the first validation whose loss is at or below target, or None."""
    for v in run["valid"]:
        x = v.get("loss")
        if x is not None and x <= target:
            return v["wall"], v["step"]
    return None


def loss_table(runs, targets):
    """Markdown table: training seconds (steps) to each validation-loss target."""
    head = ["run", "first valid loss", "best valid loss"] + [f"loss {t:g}: s (step)" for t in targets]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        ls = [v["loss"] for v in r["valid"] if v.get("loss") is not None]
        cells = [r["name"], fmt(ls[0], 3) if ls else "-", fmt(min(ls), 3) if ls else "-"]
        for t in targets:
            hit = first_below(r, t)
            cells.append(f"{hit[0]:.0f} ({hit[1]})" if hit else "not reached")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def loss_targets(runs):
    """Up to 5 validation-loss levels between the worst first and the best loss of any run."""
    ls = [[v["loss"] for v in r["valid"] if v.get("loss") is not None] for r in runs]
    ls = [x for x in ls if x]
    if not ls:
        return []
    lo, hi = min(min(x) for x in ls), min(x[0] for x in ls)
    cand = [round(math.floor(hi * 10) / 10 - 0.1 * k, 1) for k in range(0, 100)]
    got = [t for t in cand if t >= lo]
    if len(got) > 5:
        step = len(got) / 5.0
        got = [got[int(i * step)] for i in range(5)]
    return got


def best(run):
    m = metric(run)
    vs = [v for v in run["valid"] if v.get(m) is not None]
    if not vs:
        return None
    return max(vs, key=lambda v: v[m])


def fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.{nd}f}"
    return str(x)


def targets_reached(runs, candidates):
    """The candidate targets that at least one run reaches (at most 5, lowest first)."""
    got = [t for t in candidates if any(first_reach(r, t) for r in runs)]
    if len(got) > 5:
        got = got[:2] + got[-3:]
    return got


def run_table(runs, targets, kind):
    """Markdown table: one row per run."""
    unit = "BLEU" if kind == "bleu" else "acc"
    head = ["run", "norm", "lr", "schedule", "steps", "train s", "best " + unit, "at step (s)"]
    head += [(f"BLEU {t:g}" if kind == "bleu" else f"acc {100 * t:g}%") + ": s (step)" for t in targets]
    head += ["final valid loss", "test " + unit, "diverged"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        c = r["conf"]
        last_t = r["train"][-1] if r["train"] else {}
        end = r["end"] or r["diverged"] or last_t
        b = best(r)
        m = metric(r)
        cells = [r["name"], c.get("norm", "?"), c.get("lr", "?"), schedule(c),
                 fmt(end.get("step")), fmt(end.get("wall"), 0)]
        if b:
            val = b[m] * (100 if kind == "acc" else 1)
            cells += [fmt(val, 2), f"{b['step']} ({b['wall']:.0f})"]
        else:
            cells += ["-", "-"]
        for t in targets:
            hit = first_reach(r, t)
            cells.append(f"{hit[0]:.0f} ({hit[1]})" if hit else "not reached")
        cells.append(fmt(r["valid"][-1]["loss"], 3) if r["valid"] else "-")
        if r["test"]:
            tv = r["test"].get(m)
            cells.append(fmt(tv * (100 if kind == "acc" else 1), 2) if tv is not None else "-")
        else:
            cells.append("-")
        cells.append(f"at step {r['diverged']['step']}" if r["diverged"] else "no")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def write_dat(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(" ".join(str(x) for x in row) + "\n")


def gradnorm_tables(gdir):
    """{(file stem): [records]} of runs/gradnorm/*.jsonl."""
    out = {}
    for p in sorted(glob.glob(os.path.join(gdir, "*.jsonl"))):
        recs = [o for o in read_jsonl(p) if o.get("type") == "gradnorm"]
        if recs:
            out[os.path.splitext(os.path.basename(p))[0]] = recs
    return out


def per_layer(recs, norm, side, L=None):
    """[(layer, norm)] for one norm/side (and depth L, default the smallest present)."""
    rs = [o for o in recs if o["norm"] == norm and o["side"] == side]
    if not rs:
        return []
    if L is None:
        L = min(o["enc_layers"] for o in rs)
    rs = [o for o in rs if o["enc_layers"] == L]
    last = {}
    for o in rs:
        last[o["layer"]] = o["grad_norm_fc2"]  # newest measurement of a layer wins
    return sorted(last.items())


def last_vs_depth(recs, norm, side):
    """[(L, last layer's norm)]."""
    out = {}
    for o in recs:
        if o["norm"] == norm and o["side"] == side:
            n = o["enc_layers"] if side == "encoder" else o["dec_layers"]
            if o["layer"] == n:
                out[n] = o["grad_norm_fc2"]
    return sorted(out.items())


def gnuplot_multi(out_png, title, xlabel, ylabel, series, logy=False, extra=""):
    """gnuplot commands for one PNG with several (datafile, x, y, title) series."""
    if not series:
        return ""
    g = [f'set output "{out_png}"', f'set title "{title}"', f'set xlabel "{xlabel}"',
         f'set ylabel "{ylabel}"', "set logscale y" if logy else "unset logscale y", extra]
    parts = [f'"{d}" using {x}:{y} with linespoints title "{t}"' for d, x, y, t in series]
    g.append("plot " + ", \\\n     ".join(parts))
    return "\n".join(g) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--summary", action="store_true", help="print the run table only")
    ap.add_argument("--bleu-targets", default="")
    ap.add_argument("--acc-targets", default="")
    ap.add_argument("--loss-targets", default="", help="translation validation-loss levels")
    a = ap.parse_args()

    sdir, gdir = os.path.join(a.runs, "study"), os.path.join(a.runs, "gradnorm")
    runs = [load_run(os.path.dirname(p)) for p in sorted(glob.glob(os.path.join(sdir, "*", "metrics.jsonl")))]
    mt = [r for r in runs if r["kind"] == "bleu"]
    clf = [r for r in runs if r["kind"] == "acc"]
    bt = [float(x) for x in a.bleu_targets.split(",") if x] or targets_reached(mt, BLEU_TARGETS)
    at = [float(x) for x in a.acc_targets.split(",") if x] or targets_reached(clf, ACC_TARGETS)

    md = []
    if mt:
        md += ["## Translation runs (validation BLEU, greedy, first sentences of valid)", ""]
        md += run_table(mt, bt, "bleu") + [""]
        lt = [float(x) for x in a.loss_targets.split(",") if x] or loss_targets(mt)
        if lt:
            md += ["Training seconds (steps) to a validation loss (label-smoothed, per token):", ""]
            md += loss_table(mt, lt) + [""]
    if clf:
        md += ["## Classification runs (validation accuracy, %)", ""]
        md += run_table(clf, at, "acc") + [""]
    if a.summary:
        print("\n".join(md) if md else "no runs under " + sdir)
        return 0

    rdir = os.path.join(a.runs, "report")
    os.makedirs(rdir, exist_ok=True)
    gp = ['set terminal pngcairo size 900,560 font ",10"', "set grid", "set key outside right",
          "set datafile missing '?'"]
    pngs = []

    # training runs: one data file per run and line type
    for r in runs:
        n = r["name"]
        m = metric(r)
        write_dat(f"{rdir}/{n}.train.dat",
                  [(o["step"], o["wall"], o["loss"], o["lr"], o["gnorm"]) for o in r["train"]])
        write_dat(f"{rdir}/{n}.valid.dat",
                  [(o["step"], o["wall"], o["loss"],
                    (o.get(m) * (100 if m == "accuracy" else 1)) if o.get(m) is not None else "?")
                   for o in r["valid"]])
    for group, label, tag in ((mt, "BLEU", "bleu"), (clf, "accuracy (%)", "accuracy")):
        if not group:
            continue
        vgroup = [r for r in group if r["valid"]]
        tgroup = [r for r in group if r["train"]]
        for xcol, xname in ((2, "wall"), (1, "steps")):
            if not vgroup:
                break
            png = f"{tag}_vs_{xname}.png"
            xl = "training wall time (s)" if xcol == 2 else "update steps"
            gp.append(gnuplot_multi(f"{rdir}/../{png}", f"validation {label} against {xl}", xl, label,
                                    [(f"{rdir}/{r['name']}.valid.dat", xcol, 4, r["name"]) for r in vgroup]))
            pngs.append((png, f"validation {label} against {xl}"))
        if vgroup:
            png = f"{tag}_valid_loss.png"
            gp.append(gnuplot_multi(f"{rdir}/../{png}", "validation loss", "update steps", "loss",
                                    [(f"{rdir}/{r['name']}.valid.dat", 1, 3, r["name"]) for r in vgroup]))
            pngs.append((png, "validation loss against steps"))
        if not tgroup:
            continue
        png = f"{tag}_train_loss.png"
        gp.append(gnuplot_multi(f"{rdir}/../{png}", "training loss", "update steps", "loss",
                                [(f"{rdir}/{r['name']}.train.dat", 1, 3, r["name"]) for r in tgroup]))
        pngs.append((png, "training loss against steps"))
        png = f"{tag}_lr.png"
        gp.append(gnuplot_multi(f"{rdir}/../{png}", "learning rate (train lines)", "update steps", "lr",
                                [(f"{rdir}/{r['name']}.train.dat", 1, 4, r["name"]) for r in tgroup],
                                extra="set format y '%.0e'"))
        pngs.append((png, "learning-rate schedules"))
        gp.append("set format y '%g'")

    # gradient norms
    gn = gradnorm_tables(gdir)
    allrecs = [o for recs in gn.values() for o in recs]
    layer_recs = [o for k, recs in gn.items() if k.startswith("layers") for o in recs] or allrecs
    depth_recs = [o for k, recs in gn.items() if k.startswith("depth") for o in recs] or allrecs
    gmd = []
    if allrecs:
        series = []
        gmd += ["## Gradient norm of each layer's W2 at initialization (Figure 3)", ""]
        for norm in ("post", "pre"):
            for side in ("encoder", "decoder"):
                pl = per_layer(layer_recs, norm, side)
                if not pl:
                    continue
                f = f"{rdir}/gn-{norm}-{side}.dat"
                write_dat(f, pl)
                series.append((f, 1, 2, f"{norm}-LN {side}"))
                o = next(x for x in layer_recs if x["norm"] == norm and x["side"] == side)
                vals = " ".join(f"{v:.3g}" for _, v in pl)
                gmd.append(f"- {norm}-LN {side} ({o['enc_layers']}+{o['dec_layers']}, d {o['d_model']}, "
                           f"{o['seeds']} seeds x {o['batches']} batches), layers 1..{len(pl)}: {vals}; "
                           f"last/first = {pl[-1][1] / pl[0][1]:.2f}")
        gp.append(gnuplot_multi(f"{rdir}/../gradnorm_layers.png",
                                "||dL/dW2||_F at initialization, 6+6", "layer", "gradient norm", series,
                                extra="set xtics 1"))
        pngs.append(("gradnorm_layers.png", "gradient norm of each layer's W2 at initialization"))
        series = []
        gmd += ["", "Last layer's W2 gradient norm against depth (L+L):", ""]
        for norm in ("post", "pre"):
            for side in ("encoder", "decoder"):
                dv = last_vs_depth(depth_recs, norm, side)
                if len(dv) < 2:
                    continue
                f = f"{rdir}/gnd-{norm}-{side}.dat"
                write_dat(f, dv)
                series.append((f, 1, 2, f"{norm}-LN {side}, last layer"))
                gmd.append(f"- {norm}-LN {side}: " + ", ".join(f"L={L}: {v:.3g}" for L, v in dv)
                           + f"; L={dv[-1][0]} / L={dv[0][0]} = {dv[-1][1] / dv[0][1]:.2f}")
        gp.append(gnuplot_multi(f"{rdir}/../gradnorm_depth.png",
                                "last layer's ||dL/dW2||_F at initialization against depth",
                                "layers per side (L+L)", "gradient norm", series, extra="set xtics 2"))
        pngs.append(("gradnorm_depth.png", "last layer's gradient norm against depth"))
        eo = [o for k, recs in gn.items() if k.startswith("encoder-only") for o in recs]
        series = []
        if eo:
            gmd += ["", "Encoder-only models (no decoder; the loss read from the encoder's top), "
                    "W2 gradient norm of each layer:", ""]
        for arch in sorted({o.get("arch", "?") for o in eo}):
            for norm in ("post", "pre"):
                pl = per_layer([o for o in eo if o.get("arch", "?") == arch], norm, "encoder")
                if not pl:
                    continue
                f = f"{rdir}/gne-{arch}-{norm}.dat"
                write_dat(f, pl)
                series.append((f, 1, 2, f"{arch.replace('_', '-')} {norm}-LN"))  # _ would subscript
                gmd.append(f"- {arch} {norm}-LN, layers 1..{len(pl)}: "
                           + " ".join(f"{v:.3g}" for _, v in pl) + f"; last/first = {pl[-1][1] / pl[0][1]:.2f}")
        if series:
            gp.append(gnuplot_multi(f"{rdir}/../gradnorm_encoder_only.png",
                                    "||dL/dW2||_F at initialization, encoder-only models", "layer",
                                    "gradient norm", series, extra="set xtics 1"))
            pngs.append(("gradnorm_encoder_only.png", "encoder-only models: gradient norm of each layer's W2"))
        gmd.append("")

    with open(os.path.join(rdir, "plots.gp"), "w") as f:
        f.write("\n".join(x for x in gp if x) + "\n")

    out = ["# mpiformer study report", "",
           f"Generated by scripts/report.sh from {sdir}/*/metrics.jsonl and {gdir}/*.jsonl. "
           "Times are training seconds (validation excluded); a BLEU/accuracy target is reached at "
           "the first validation at or above it.", ""]
    out += md + gmd
    if pngs:
        out += ["## Plots", ""] + [f"- ![{t}]({p}) {t}" for p, t in pngs] + [""]
    if not runs and not allrecs:
        out.append("No runs found: run `make study` first.")
    with open(os.path.join(a.runs, "report.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {a.runs}/report.md and {rdir}/plots.gp ({len(runs)} runs, {len(allrecs)} gradnorm lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
