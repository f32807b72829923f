#!/usr/bin/env python3
"""scaling_model.py: the communication fits and the scaling model of docs/SCALING.md.

    /usr/bin/python3 scripts/scaling_model.py OUTDIR [--doc docs/SCALING.md] [--png-dir docs]
                                              [--out DIR]
    /usr/bin/python3 scripts/scaling_model.py --fit FILE.jsonl    (fits of one bench_comm file)

OUTDIR is what scripts/scaling_measure.sh wrote. This script
  1. fits t = alpha + bytes / beta to every bench_comm op at every rate (comm_RATE.jsonl,
     comm_extra_RATE.jsonl, comm_shm.jsonl): beta from the messages >= 1 MiB (least
     squares of the relative residuals), alpha from the smallest; alpha in microseconds,
     beta in Gbit/s (of the message's bytes: for allreduce, the buffer's), the worst
     relative residuals;
  2. takes the per-rank compute rate from bench_model base 64 32 on 1 rank (the mean of the
     compute_pair_RATE.jsonl runs: one rank in each node at the same time, both cores busy
     as in the 2-rank runs; compute_alone if there are none), as matmul FLOP/s of a step;
     each rate's in-box prediction uses that rate's pair, measured just before its runs;
  3. predicts the in-box points (dp=2 at each rate, with and without gradient overlap;
     tp=2 in one node; pp=2 across the nodes) and compares them with the measured ones;
  4. predicts step time, tokens/s and memory per rank of `base` and of the WMT14 job at 2 to
     256 ranks for dp, tp, pp and mixes on a 25 and a 100 Gbit/s cluster;
  5. writes OUTDIR/model/ (or --out DIR): fits.json, predictions.json, tables.txt (every table of
     docs/SCALING.md), .dat files and scaling.gp; gnuplot draws scaling.png (the fits, and
     every measured in-box point next to its prediction) and scaling_predict.png (scaling
     efficiency against ranks) into --png-dir (default OUTDIR/model).
With --doc FILE the tables between "<!-- scaling_model:begin NAME -->" and
"<!-- scaling_model:end NAME -->" lines in FILE are replaced by the new ones.
The model's equations and assumptions are in docs/SCALING.md; the code says which line is
which. numpy only (no matplotlib); gnuplot for the plots.
"""
import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys

import numpy as np

GBIT = 1e9 / 8  # bytes per second in one Gbit/s
OPS = ["allreduce", "reduce_scatter", "allgather", "rs_ag", "p2p", "allreduce_rd"]


# ---- reading ------------------------------------------------------------------------------
def load_jsonl(path):
    out = []
    if not os.path.exists(path):
        return out
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # two ranks' /usr/bin/time lines written into each other
                print(f"scaling_model: {path}: skipped a line that is not JSON: {line[:60]}",
                      file=sys.stderr)
    return out


def rate_gbit(name):
    """'10gbit' -> 10.0, '500mbit' -> 0.5; None for 'shm' and the like."""
    m = re.fullmatch(r"([0-9.]+)(gbit|mbit)", name)
    if not m:
        return None
    return float(m.group(1)) * (1 if m.group(2) == "gbit" else 1e-3)


# ---- 1. alpha-beta fits -------------------------------------------------------------------
def fit_alpha_beta(points, large=1 << 20):
    """points: [(bytes, seconds)]. beta from the large messages (>= `large` bytes): least
    squares of the relative residuals of alpha' + bytes / beta; alpha from the smallest
    message: its seconds less its bytes at beta (at least 0). The two regimes apart because
    a shaped link lets a burst through at the veth's speed (tc tbf's bucket: 1 ms of the
    rate, at least 128 KiB), so one straight line through all sizes fits neither end. Falls back to all points where a regime has none. Returns alpha (s), beta (bytes/s),
    the worst relative residual over all points and over the large ones."""
    pts = sorted(points)
    big = [p for p in pts if p[0] >= large]
    if len(big) < 2:
        big = pts
    b = np.array([p[0] for p in big], float)
    t = np.array([p[1] for p in big], float)
    A = np.stack([1 / t, b / t], axis=1)
    (_, x), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if x <= 0:  # flat: fit the slope alone
        x = float(np.sum(b / t) / np.sum((b / t) ** 2))
    alpha = max(0.0, pts[0][1] - pts[0][0] * x)

    def worst(ps):
        return float(max(abs(alpha + bb * x - tt) / tt for bb, tt in ps))

    return {"alpha_s": alpha, "beta_Bps": float(1 / x), "worst_rel_residual": worst(pts),
            "worst_rel_residual_large": worst(big), "n": len(pts),
            "min_bytes": int(pts[0][0]), "max_bytes": int(pts[-1][0])}


def fits_of_file(path):
    by_op = {}
    for o in load_jsonl(path):
        if "seconds" in o and o.get("op") in OPS:
            by_op.setdefault(o["op"], []).append((o["bytes"], o["seconds"]))
    return {op: fit_alpha_beta(p) for op, p in by_op.items() if len(p) >= 2}


def all_fits(outdir):
    """{rate: {op: fit}} for comm_RATE.jsonl (+ comm_extra_RATE.jsonl) and comm_shm.jsonl."""
    fits = {}
    for path in sorted(glob.glob(os.path.join(outdir, "comm_*.jsonl"))):
        name = os.path.basename(path)[len("comm_"):-len(".jsonl")]
        rate = name[len("extra_"):] if name.startswith("extra_") else name
        fits.setdefault(rate, {}).update(fits_of_file(path))
    return fits


def rate_order(rates):
    return sorted(rates, key=lambda r: (rate_gbit(r) is None, rate_gbit(r) or 0, r))


# ---- the model's shapes -------------------------------------------------------------------
# base: bench_model.c's (config defaults: Pre-LN, shared embeddings, no activation dropout);
# wmt14: jobs/paper/wmt14-*.conf (Post-LN, share_embeddings = all, max_tokens = 4096 per
# micro-batch; vocabulary 37000 from its data_prep/pack.py line), taken as 128 sentences
# x 32 tokens, source and target alike.
SHAPES = {
    "base": dict(d=512, F=1024, H=4, Le=6, Ld=6, V=8000, pre_ln=True, B=64, T=32),
    "wmt14": dict(d=512, F=2048, H=8, Le=6, Ld=6, V=37000, pre_ln=False, B=128, T=32),
}


def layer_params(s, decoder):
    """(matrix floats, vector floats) of one layer (model_init.c's reg_layer)."""
    d, F = s["d"], s["F"]
    attn = (4 * d * d, 4 * d)
    mat = attn[0] * (2 if decoder else 1) + 2 * d * F
    vec = attn[1] * (2 if decoder else 1) + F + d + 2 * d * (3 if decoder else 2)
    return mat, vec


def stage_plan(s, pp):
    """model_stage_plan: first[k] = first layer (0 .. Le+Ld) of stage k, minimizing the
    largest stage cost (multiply-adds per token, embeddings and output projection added)."""
    nE, n, d, F = s["Le"], s["Le"] + s["Ld"], s["d"], s["F"]
    cost = [4 * d * d + 2 * d * F if l < nE else 8 * d * d + 2 * d * F for l in range(n)]
    cost[0] += d
    cost[nE] += d
    cost[n - 1] += s["V"] * d
    pre = [0.0]
    for c in cost:
        pre.append(pre[-1] + c)
    best = {(1, i): pre[i] for i in range(n + 1)}
    cut = {(1, i): 0 for i in range(n + 1)}
    for k in range(2, pp + 1):
        for i in range(k, n + 1):
            bv, bj = -1, 0
            for j in range(k - 1, i):
                v = max(best[(k - 1, j)], pre[i] - pre[j])
                if bv < 0 or v < bv:
                    bv, bj = v, j
            best[(k, i)], cut[(k, i)] = bv, bj
    first = [0] * (pp + 1)
    first[pp] = n
    for k in range(pp, 0, -1):
        first[k - 1] = cut[(k, first[k])]
    return first, [pre[first[k + 1]] - pre[first[k]] for k in range(pp)]


def stages(s, pp):
    """Per stage: its encoder/decoder layer ranges, cost share, matrix and vector floats
    (the tied embedding on stage 0, the decoder's first stage and the last, as model_init.c)."""
    first, cost = stage_plan(s, pp)
    nE, nD, V, d = s["Le"], s["Ld"], s["V"], s["d"]
    st_dec0 = max(k for k in range(pp) if first[k] <= nE) if nD else 0
    st_enc_last = max(k for k in range(pp) if first[k] <= nE - 1)
    out = []
    for k in range(pp):
        e0, e1 = min(max(first[k], 0), nE), min(max(first[k + 1], 0), nE)
        d0, d1 = min(max(first[k] - nE, 0), nD), min(max(first[k + 1] - nE, 0), nD)
        mat = vec = 0
        for _ in range(e0, e1):
            m, v = layer_params(s, False)
            mat, vec = mat + m, vec + v
        for _ in range(d0, d1):
            m, v = layer_params(s, True)
            mat, vec = mat + m, vec + v
        if k in (0, st_dec0, pp - 1):
            mat += V * d
        if s["pre_ln"] and k == st_enc_last:
            vec += 2 * d
        if s["pre_ln"] and k == pp - 1:
            vec += 2 * d
        out.append(dict(enc=(e0, e1), dec=(d0, d1), cost=cost[k] / sum(cost), mat=mat, vec=vec,
                        last=k == pp - 1, enc_last=e1 == nE and e1 > e0,
                        emb_owners=len({0, st_dec0, pp - 1})))
    return out


def n_params(s):
    st = stages(s, 1)[0]
    return st["mat"] + st["vec"]


def step_flops(s, B, T):
    """bench_model.c's step_flops: matmul FLOPs of forward + backward (3x forward)."""
    n, d, F, H, V = B * T, s["d"], s["F"], s["H"], s["V"]
    lin = 2 * n * d * d
    attn = 2 * 2 * B * H * T * T * (d / H)
    ffn = 2 * 2 * n * d * F
    return 3 * (s["Le"] * (4 * lin + attn + ffn) + s["Ld"] * (8 * lin + 2 * attn + ffn) + 2 * n * d * V)


def arena_floats(s, st, B, T, pr, pc, n_floats, vec_floats):
    """model_arena.c's acts_layout for one micro-batch slot of stage st on a pr x pc grid
    (B sequences split over the process rows, features over the columns)."""
    Bl = math.ceil(B / pr)
    d, F, H, V = s["d"] / pc, s["F"] / pc, s["H"] / pc, s["V"] / pc
    nS = nT = Bl * T
    nmax, Tmax = max(nS, nT), T
    e0, e1 = st["enc"]
    d0, d1 = st["dec"]
    c = 0
    if e1 > e0:
        c += (2 * (e1 - e0) + 1) * nS * d
    if d1 > d0:
        c += (3 * (d1 - d0) + 1) * nT * d
    hd = 0  # activation dropout off in both shapes: hd aliases h
    for _ in range(e0, e1):
        c += 2 * (nS * d + 2 * nS + nS * d / 32)  # ln_out or resid, mean, rstd, dropout bits
        c += 4 * nS * d + Bl * H * T * T  # q k v o, probs
        c += nS * F + hd
    for _ in range(d0, d1):
        c += 3 * (nT * d + 2 * nT + nT * d / 32)
        c += 2 * (4 * nT * d + Bl * H * T * T)  # self and cross attention
        c += nT * F + hd
    if s["pre_ln"] or not st["enc_last"]:
        c += nS * d
    c += 2 * nS + 2 * nT
    if d1 > d0 and st["last"] and s["pre_ln"]:
        c += nT * d
    if st["last"]:
        c += nT * V
    # F's output (one buffer for every sublayer), the backward scratch, attention scratch
    c += nmax * d + 8 * nmax * d + nmax * F + nS * d + 2 * Tmax * Tmax + 2 * nmax + 8 * nmax
    if pr > 1:
        c += s["V"] * s["d"] + vec_floats
    return c


# ---- the network --------------------------------------------------------------------------
class Net:
    """Times of the step's collectives on N ranks from the 2-rank fits of one rate: Open MPI's
    large-message algorithms taken as rings with the per-link alpha and beta that reproduce the
    2-rank fit (a ring all-reduce is 2(N-1) steps of bytes/N each, a reduce-scatter or
    all-gather N-1 of them):
        allreduce(N, n)   = 2(N-1) a_ar + 2(N-1)/N n / b_ar,  a_ar = alpha_ar / 2, b_ar = beta_ar
        reduce_scatter(N, n), allgather(N, n) = (N-1) a + (N-1)/N n / b,  a = alpha, b = beta / 2
        p2p(n)            = alpha_p2p + n / beta_p2p
    scale multiplies every beta (a faster link with the same efficiency)."""

    def __init__(self, fits, name, scale=1.0, alpha_scale=1.0):
        self.fits, self.name, self.scale, self.alpha_scale = fits, name, scale, alpha_scale

    def ab(self, op):
        f = self.fits[op]
        return f["alpha_s"] * self.alpha_scale, f["beta_Bps"] * self.scale

    def allreduce(self, N, n):
        if N <= 1 or n <= 0:
            return 0.0
        a, b = self.ab("allreduce")
        return 2 * (N - 1) * a / 2 + 2 * (N - 1) / N * n / b

    def reduce_scatter(self, N, n):
        if N <= 1 or n <= 0:
            return 0.0
        a, b = self.ab("reduce_scatter")
        return (N - 1) * a + (N - 1) / N * n / (b / 2)

    def allgather(self, N, n):
        if N <= 1 or n <= 0:
            return 0.0
        a, b = self.ab("allgather")
        return (N - 1) * a + (N - 1) / N * n / (b / 2)

    def p2p(self, n):
        a, b = self.ab("p2p")
        return a + n / b


# ---- the step model -----------------------------------------------------------------------
DEFAULTS = dict(overlap_phi=1.0, bucket_mb=4.0, emb_exposed=True, pblas_nb=256, tp_call_s=0.0)


def tp_comm(s, st, B, T, pr, pc, shm, nb, tp_call_s=0.0):
    """Seconds of TP communication of one micro-batch (forward + backward) on one stage, a
    volume model: each dmat_gemm C(m x n) = A(m x k) B(k x n) on the pr x pc grid moves, like
    SUMMA, the A panels of the rank's process row, 4 (m/pr) k (pc-1)/pc bytes, and the B panels
    of its column, 4 k (n/pc) (pr-1)/pr bytes, at the all-gather's per-byte cost of the shared
    memory fit, with one alpha per panel of nb columns of k per process row/column; three
    products per linear layer (forward, dX, dW); LayerNorm: 2 all-reduces of the rows'
    statistics forward, one of 2 per row backward, over the process row; the cross-entropy: 3
    all-reduces of one float per row; with pr > 1 the embedding table gathered (V x d) and the
    vector gradients summed over the process rows. Plus tp_call_s for each of these calls
    (default 0: the waiting a call adds when a partner rank is late; see docs/SCALING.md).
    Returns (seconds, calls)."""
    if pr * pc == 1:
        return 0.0, 0
    n = math.ceil(B / pr) * pr * T  # tokens of the micro-batch (both sides alike)
    d, F, V = s["d"], s["F"], s["V"]
    lin = []
    ne, nd = st["enc"][1] - st["enc"][0], st["dec"][1] - st["dec"][0]
    lin += [(d, d)] * 4 * ne + [(d, F), (F, d)] * ne
    lin += [(d, d)] * 8 * nd + [(d, F), (F, d)] * nd
    if st["last"]:
        lin.append((d, V))
    a_ag, b_ag = shm.ab("allgather")
    per_byte = 2 / b_ag  # ring all-gather: per byte received by a rank (Net's b = beta/2)
    t = 0.0
    calls = 0
    for din, dout in lin:
        for m, k, nn in ((n, din, dout), (n, dout, din), (dout, n, din)):
            vol = 4 * (m / pr) * k * (pc - 1) / pc + 4 * k * (nn / pc) * (pr - 1) / pr
            t += vol * per_byte + math.ceil(k / nb) * ((pc - 1) + (pr - 1)) * a_ag
            calls += 1
    rows = n / pr
    n_ln = 2 * ne + 3 * nd + (2 if s["pre_ln"] and st["last"] else 0)
    if pc > 1:
        t += n_ln * (2 * shm.allreduce(pc, 4 * rows) + shm.allreduce(pc, 8 * rows))
        calls += 3 * n_ln
        if st["last"]:
            t += 3 * shm.allreduce(pc, 4 * rows)
            calls += 3
    if pr > 1:
        t += shm.allgather(pr, 4 * V * d) + shm.allreduce(pr, 4 * st["vec"])
        calls += 2
    return t + calls * tp_call_s, calls


def predict(shape, dp, tp, pp, net, shm, rate_flops, pr=None, pc=None, M=None, overlap=False,
            zero=0, opt=DEFAULTS, B=None, T=None):
    """One step of `shape` on dp x pp x tp ranks: seconds (and its parts), tokens/s and the
    memory per rank. A node holds one TP grid (tp ranks talking through shared memory: `shm`),
    each node has one link (`net`); dp and pp traffic crosses the links, the tp ranks of a
    node sharing theirs. Compute: the measured per-rank matmul FLOP rate, split evenly over
    the TP grid; pp: M micro-batches (default 4 pp), 1F1B."""
    s = SHAPES[shape]
    B = B or s["B"]
    T = T or s["T"]
    if pr is None:  # config.c: the most square grid whose pc divides heads, pc the larger
        pr, pc = tp, 1
        for q in range(1, tp + 1):
            if tp % q == 0 and s["H"] % q == 0:
                r = tp // q
                if abs(r - q) < abs(pr - pc) or (abs(r - q) == abs(pr - pc) and q > pc):
                    pr, pc = r, q
    M = M or (4 * pp if pp > 1 else 1)
    sts = stages(s, pp)
    P = n_params(s)
    t_c_mb = step_flops(s, B, T) / rate_flops  # one micro-batch on one rank, all layers
    # the slowest stage: its share of the model's cost (the output projection included)
    k = max(range(pp), key=lambda i: sts[i]["cost"])
    st = sts[k]
    t_tp, tp_calls = tp_comm(s, st, B, T, pr, pc, shm, opt["pblas_nb"], opt["tp_call_s"])
    t_slot = t_c_mb * st["cost"] / tp + t_tp
    parts = {}
    if pp == 1:
        t_fb = t_slot * M
        parts["compute"] = t_c_mb * M / tp
        parts["tp_comm"] = t_fb - parts["compute"]
        parts["pp_bubble"] = parts["pp_send"] = 0.0
    else:
        # each boundary carries a decoder or encoder stream (B T d floats) and, inside the
        # decoder, the encoder output too: 2 B T d floats each way (a node's tp ranks send
        # their blocks of it through the node's link)
        act = 4 * 2 * B * T * s["d"]
        send = net.p2p(act)
        # 1F1B: M + S - 1 slots; the first forward and the last backward cross S-1 boundaries
        # unhidden; in the steady state a slot's two sends hide behind its compute unless
        # they take longer
        t_fb = (M + pp - 1) * t_slot + 2 * (pp - 1) * send + M * max(0.0, 2 * send - t_slot)
        parts["compute"] = t_c_mb * st["cost"] * M / tp
        parts["tp_comm"] = (t_slot - t_c_mb * st["cost"] / tp) * M
        parts["pp_bubble"] = (pp - 1) * t_slot
        parts["pp_send"] = t_fb - (M + pp - 1) * t_slot
    # the tied embedding's gradient summed over the stages that hold it
    emb_bytes = 4 * s["V"] * s["d"] / tp
    parts["tied_emb"] = net.allreduce(st["emb_owners"], emb_bytes * tp) if pp > 1 else 0.0
    # the data-parallel gradient sync of this stage's gradients (4 bytes a parameter, the
    # node's tp ranks' blocks together through its link)
    G = 4 * (st["mat"] + st["vec"])
    if dp > 1:
        full = (net.reduce_scatter(dp, G) + net.allgather(dp, G)) if zero else net.allreduce(dp, G)
        if overlap:
            # buckets leave the backward as it goes (backward = 2/3 of the compute); the tied
            # embedding's gradient is complete only at its end, and so is the last bucket
            E = 4 * s["V"] * s["d"] if opt["emb_exposed"] and (k == 0 or st["last"]) else 0.0
            rest = G - E
            t_bwd = 2 / 3 * t_fb
            sync = (lambda n: net.reduce_scatter(dp, n)) if zero else (lambda n: net.allreduce(dp, n))
            last = sync(min(rest, opt["bucket_mb"] * 2**20))
            exposed = sync(E) + max(last, sync(rest) - opt["overlap_phi"] * t_bwd)
            if zero:
                exposed += net.allgather(dp, G)
            parts["dp_sync"] = min(full, exposed)
        else:
            parts["dp_sync"] = full
    else:
        parts["dp_sync"] = 0.0
    step = t_fb + parts["tied_emb"] + parts["dp_sync"]
    tokens = dp * M * B * T
    # memory per rank (MiB): parameters + gradients, Adam moments (sharded over dp with
    # zero=1), the activation arenas (what one micro-batch touches: model_arena.c allocates
    # 1.25x that, but the rest is not resident until a larger batch comes; stage k keeps
    # min(M, S-k) micro-batches in flight under 1F1B)
    mem = {}
    p_rank = st["mat"] / tp + st["vec"] / pc
    mem["params_grads"] = 2 * 4 * p_rank / 2**20
    mem["adam"] = 2 * 4 * p_rank / (dp if zero else 1) / 2**20
    worst_act = 0
    for i, sti in enumerate(sts):
        slots = min(M, pp - i)
        a = 4 * slots * arena_floats(s, sti, B, T, pr, pc, p_rank, sti["vec"] / pc) / 2**20
        worst_act = max(worst_act, a)
    mem["activations"] = worst_act
    mem["total"] = sum(mem.values())
    return dict(shape=shape, dp=dp, tp=tp, pp=pp, pr=pr, pc=pc, M=M, zero=zero, overlap=overlap,
                step_s=step, tokens_per_s=tokens / step, tokens_per_step=tokens, tp_calls=tp_calls * M,
                parts=parts, mem_mib=mem, params=P)


# ---- the measurements ---------------------------------------------------------------------
def bench_lines(path):
    return [o for o in load_jsonl(path) if "tokens_per_s" in o]


def rss_lines(path):
    return [o["maxrss_kb"] for o in load_jsonl(path) if "maxrss_kb" in o]


def steps_of(paths):
    return [o["step_s"] for p in paths for o in bench_lines(p)]


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", nargs="?")
    ap.add_argument("--fit", help="print the fits of one bench_comm JSON-lines file and exit")
    ap.add_argument("--doc", help="replace the marked tables in this Markdown file")
    ap.add_argument("--png-dir", help="where scaling.png and scaling_predict.png go")
    ap.add_argument("--out", help="where the tables, fits, .dat files go (default OUTDIR/model)")
    ap.add_argument("--assume-overlap", action="store_true",
                    help="treat MPIFORMER_GRAD_OVERLAP=1 runs as overlapped even if bench_model "
                         "does not report grad_overlap")
    ap.add_argument("--bucket-mb", type=float, default=DEFAULTS["bucket_mb"],
                    help="overlap: the last bucket's MiB (exposed after the backward)")
    ap.add_argument("--overlap-phi", type=float, default=DEFAULTS["overlap_phi"],
                    help="overlap: the share of the backward that hides communication")
    ap.add_argument("--no-emb-exposed", action="store_true",
                    help="overlap: the tied embedding's gradient sync hides too")
    ap.add_argument("--tp-call-ms", type=float, default=0.0,
                    help="TP: milliseconds of waiting added to every TP collective call")
    args = ap.parse_args()
    if args.fit:
        for op, f in sorted(fits_of_file(args.fit).items()):
            print(json.dumps(dict(op=op, **f)))
        return
    if not args.outdir:
        ap.error("OUTDIR or --fit FILE")
    opt = dict(DEFAULTS, bucket_mb=args.bucket_mb, overlap_phi=args.overlap_phi,
               emb_exposed=not args.no_emb_exposed, tp_call_s=args.tp_call_ms * 1e-3)
    outdir = args.outdir
    mdir = args.out or os.path.join(outdir, "model")
    os.makedirs(mdir, exist_ok=True)
    png_dir = args.png_dir or mdir
    tables = {}
    base = SHAPES["base"]
    B0, T0 = base["B"], base["T"]
    F0 = step_flops(base, B0, T0)

    # 1. fits
    fits = all_fits(outdir)
    rates = rate_order([r for r in fits if r != "shm"])
    if not rates or "shm" not in fits:
        sys.exit("scaling_model: need comm_RATE.jsonl for at least one rate and comm_shm.jsonl")
    json.dump(fits, open(os.path.join(mdir, "fits.json"), "w"), indent=1)
    rows = []
    for r in rate_order(list(fits)):
        for op in OPS:
            if op in fits[r]:
                f = fits[r][op]
                eff = f"{f['beta_Bps'] / GBIT / rate_gbit(r):.2f}" if rate_gbit(r) else "-"
                rows.append([r, op, f"{f['alpha_s'] * 1e6:.0f}", f"{f['beta_Bps'] / GBIT:.2f}", eff,
                             f"{f['worst_rel_residual_large']:.2f}", f"{f['worst_rel_residual']:.2f}",
                             f"{f['min_bytes'] // 1024} KiB - {f['max_bytes'] // 2**20} MiB"])
    tables["fits"] = table(["link", "op", "alpha us", "beta Gbit/s", "beta / link rate",
                            "worst rel. residual >= 1 MiB", "worst rel. residual, all sizes",
                            "sizes"], rows)

    # the Iallreduce-under-compute probe
    rows = []
    for r in rates:
        for o in load_jsonl(os.path.join(outdir, f"comm_extra_{r}.jsonl")):
            if o.get("op") == "iallreduce_overlap":
                every = "never" if o["test_interval_ms"] == 0 else f"{o['test_interval_ms']:g} ms"
                rows.append([r, f"{o['bytes'] // 2**20} MiB", every, f"{o['compute_s']:.3f}",
                             f"{o['wait_s']:.3f}"])
    tables["overlap_probe"] = table(["link", "Iallreduce", "MPI_Test every", "compute s",
                                     "left at MPI_Wait s"], rows)

    # 2. the per-rank compute rate: 1 rank in each node at once (both cores busy, as in the
    # 2-rank runs), measured before each rate's runs; all of them for the cluster predictions
    pair_all = steps_of(sorted(glob.glob(os.path.join(outdir, "compute_pair_*.jsonl"))))
    alone = steps_of([os.path.join(outdir, "compute_alone.jsonl")])
    if not pair_all and not alone:
        sys.exit("scaling_model: no compute_pair_*.jsonl or compute_alone.jsonl in the folder")
    t_pair = float(np.mean(pair_all or alone))
    R = F0 / t_pair
    t_alone = float(np.mean(alone)) if alone else None

    # 3. the in-box points
    shm = Net(fits["shm"], "shm")
    inbox, eff_rows = [], []
    for r in rates:
        net = Net(fits[r], r)
        pr_steps = steps_of([os.path.join(outdir, f"compute_pair_{r}.jsonl")])
        t_c = float(np.mean(pr_steps)) if pr_steps else t_pair
        Rr = F0 / t_c
        for ov in (0, 1):
            m = bench_lines(os.path.join(outdir, f"step_{r}_overlap{ov}.jsonl"))
            if not m:
                continue
            m = m[0]
            landed = "grad_overlap" in m or args.assume_overlap
            pending = ov == 1 and not landed
            p = predict("base", 2, 1, 1, net, shm, Rr, overlap=bool(ov), opt=opt)
            inbox.append(dict(label=f"dp=2 {r} overlap={ov}", rate=r, kind="dp2", ov=ov,
                              measured=m["step_s"], predicted=p["step_s"], compute=t_c,
                              comm_measured=m["step_s"] * m["comm_fraction"],
                              comm_predicted=p["parts"]["dp_sync"], sgemm=m["sgemm_1core_gflops"],
                              target=not pending,
                              note="pending: bench_model ran without gradient overlap" if pending else ""))
            tok1 = B0 * T0 / t_alone if t_alone else None
            eff_rows.append([r, ov, f"{m['tokens_per_s']:.1f}", f"{m['step_s']:.2f}",
                             f"{m['comm_fraction']:.3f}",
                             f"{m['tokens_per_s'] / (2 * tok1):.3f}" if tok1 else "-",
                             f"{m['tokens_per_s'] / (2 * B0 * T0 / t_c):.3f}",
                             f"{t_c / p['step_s']:.3f}",
                             "pending: no overlap in this build (same as overlap=0)" if pending else ""])
    tables["dp_efficiency"] = table(
        ["link", "overlap", "2-rank tok/s", "step s", "comm share (rank 0 in MPI)",
         "DP eff. vs 1 rank alone", "vs 1 rank beside another (same minutes)", "model", "note"],
        eff_rows)
    # the bucket-size sweep (SCALING_BUCKETS, at the first rate), next to that rate's runs
    rows = []
    for r in rates:
        files = [(None, f"step_{r}_overlap0.jsonl"), (None, f"step_{r}_overlap1.jsonl")]
        files += sorted(((float(os.path.basename(f).split("bucket")[1][:-6]), f) for f in
                         glob.glob(os.path.join(outdir, f"step_{r}_overlap1_bucket*.jsonl"))))
        if len(files) == 2:
            continue
        for _, f in files:
            m = bench_lines(os.path.join(outdir, os.path.basename(f)))
            if not m:
                continue
            m = m[0]
            on = m.get("grad_overlap", 0)
            rows.append([r, "off" if not on else f"{m.get('grad_bucket_mb', '-'):g}",
                         str(m.get("grad_buckets", 0)), f"{m['step_s']:.2f}",
                         f"{m['step_s'] * m['comm_fraction']:.3f}", f"{m['tokens_per_s']:.1f}",
                         f"{m['sgemm_1core_gflops']:.0f}"])
    tables["buckets"] = table(["link", "bucket MiB", "buckets", "step s",
                               "s in MPI (rank 0)", "2-rank tok/s", "sgemm GFLOP/s at start"], rows)
    tp_implied = None
    m = bench_lines(os.path.join(outdir, "step_shm_tp2.jsonl"))
    if m:
        p = predict("base", 1, 2, 1, shm, shm, R, pr=1, pc=2, opt=opt)
        cm = m[0]["step_s"] * m[0]["comm_fraction"]
        tp_implied = (cm - p["parts"]["tp_comm"]) / p["tp_calls"] if p["tp_calls"] else None
        inbox.append(dict(label="tp=2 (1x2) shared memory", rate="shm", kind="tp2", ov=0,
                          measured=m[0]["step_s"], predicted=p["step_s"], compute=t_pair,
                          comm_measured=cm, comm_predicted=p["parts"]["tp_comm"],
                          sgemm=m[0]["sgemm_1core_gflops"], target=False,
                          note="a check of the TP term, not a target point"))
    for r in rates:
        m = bench_lines(os.path.join(outdir, f"step_{r}_pp2.jsonl"))
        if m:
            pr_steps = steps_of([os.path.join(outdir, f"compute_pair_{r}.jsonl")])
            t_c = float(np.mean(pr_steps)) if pr_steps else t_pair
            p = predict("base", 1, 1, 2, Net(fits[r], r), shm, F0 / t_c, M=4, B=16, T=32, opt=opt)
            inbox.append(dict(label=f"pp=2 {r}, 4 x 16x32", rate=r, kind="pp2", ov=0,
                              measured=m[0]["step_s"], predicted=p["step_s"], compute=t_c,
                              comm_measured=None,
                              comm_predicted=p["parts"]["pp_send"] + p["parts"]["tied_emb"],
                              sgemm=None, target=False,
                              note="a check of the PP term, not a target point"))
    rows = []
    for x in inbox:
        x["rel_err"] = err = x["predicted"] / x["measured"] - 1
        within = abs(err) <= 0.15
        if x["target"]:
            verdict = "**within 15%**" if within else "**not within 15%**"
        else:
            verdict = ("within 15%" if within else "not within 15%") + "; " + x["note"]
        cm = f"{x['comm_measured']:.3f}" if x["comm_measured"] is not None else "-"
        mc = own = "-"
        if x["comm_measured"] is not None:
            c_run = x["measured"] - x["comm_measured"]
            mc = f"{c_run:.2f}"
            own = f"{(c_run + x['comm_predicted']) / x['measured'] - 1:+.1%}"
        rows.append([x["label"], f"{x['measured']:.3f}", f"{x['predicted']:.3f}", f"{err:+.1%}",
                     f"{x['compute']:.2f}", mc, cm, f"{x['comm_predicted']:.3f}", own,
                     f"{x['sgemm']:.0f}" if x["sgemm"] else "-", verdict])
    tables["inbox"] = table(["point", "measured step s", "predicted step s", "error",
                             "compute s (1-rank runs)", "compute s in the run (rank 0 outside MPI)",
                             "measured comm s (rank 0 in MPI)", "predicted comm s",
                             "error with the run's own compute", "sgemm GFLOP/s at start",
                             "verdict"], rows)

    # memory: peak RSS against the model
    rows = []
    checks = [("compute_alone.jsonl", "base, 1 rank", dict(dp=1, tp=1, pp=1)),
              ("step_shm_tp2.jsonl", "base, tp=2 (1x2), larger rank", dict(dp=1, tp=2, pp=1, pr=1, pc=2))]
    checks += [(f"step_{r}_pp2.jsonl", "base, pp=2, 4 x 16x32, larger stage",
                dict(dp=1, tp=1, pp=2, M=4, B=16)) for r in rates]
    for f, what, lay in checks:
        rss = rss_lines(os.path.join(outdir, f))
        if rss:
            pm = predict("base", lay.pop("dp"), lay.pop("tp"), lay.pop("pp"), shm, shm, R, opt=opt,
                         **lay)["mem_mib"]
            rows.append([what, f"{max(rss) / 1024:.0f}", f"{pm['total']:.0f}",
                         f"{max(rss) / 1024 - pm['total']:.0f}"])
    tables["memory_check"] = table(["run", "peak RSS MiB", "model MiB", "RSS - model MiB "
                                    "(MPI, BLAS, program)"], rows)

    # 4. predictions on 25 and 100 Gbit/s clusters: the lowest in-box rate's fits (where the
    # shaped link, not this machine's CPUs, limits the transfer) scaled to the cluster's rate
    low = rates[0]
    low_g = rate_gbit(low)
    clusters = [(25, Net(fits[low], "25 Gbit/s", scale=25 / low_g)),
                (100, Net(fits[low], "100 Gbit/s", scale=100 / low_g))]
    layouts = [("dp", 1, 1), ("tp=2 x dp", 2, 1), ("tp=4 x dp", 4, 1), ("tp=8 x dp", 8, 1),
               ("pp=2 x dp", 1, 2), ("pp=4 x dp", 1, 4), ("tp=2 x pp=2 x dp", 2, 2),
               ("tp=4 x pp=2 x dp", 4, 2)]
    Ns = [2, 4, 8, 16, 32, 64, 128, 256]
    preds = []
    for shape in SHAPES:
        for gb, net in clusters:
            for name, tp, pp in layouts:
                for N in Ns:
                    if N % (tp * pp) or N < tp * pp:
                        continue
                    for ov in (0, 1):
                        p = predict(shape, N // (tp * pp), tp, pp, net, shm, R, overlap=bool(ov),
                                    opt=opt)
                        s_ = SHAPES[shape]
                        one = s_["B"] * s_["T"] * R / step_flops(s_, s_["B"], s_["T"])
                        p.update(layout=name, cluster_gbit=gb, ranks=N,
                                 efficiency=p["tokens_per_s"] / (N * one))
                        preds.append(p)
    # dp with faster ranks (10x, 100x the measured rate), for the plot
    for shape in SHAPES:
        s_ = SHAPES[shape]
        for gb, net in clusters:
            for f in (10, 100):
                for N in Ns:
                    p = predict(shape, N, 1, 1, net, shm, R * f, overlap=True, opt=opt)
                    one = s_["B"] * s_["T"] * R * f / step_flops(s_, s_["B"], s_["T"])
                    p.update(layout=f"dp, ranks {f}x faster", cluster_gbit=gb, ranks=N,
                             efficiency=p["tokens_per_s"] / (N * one), faster=f)
                    preds.append(p)
    json.dump(preds, open(os.path.join(mdir, "predictions.json"), "w"), indent=0)
    for shape in SHAPES:
        for gb, _ in clusters:
            rows = []
            for name, tp, pp in layouts:
                row = [name]
                for N in Ns:
                    c = {p["overlap"]: p for p in preds if p["shape"] == shape and
                         p["cluster_gbit"] == gb and p["layout"] == name and p["ranks"] == N
                         and "faster" not in p}
                    if not c:
                        row.append("-")
                        continue
                    row.append(f"{c[False]['tokens_per_s']:.0f} / {c[True]['tokens_per_s']:.0f} "
                               f"({c[False]['step_s']:.2f} / {c[True]['step_s']:.2f})")
                rows.append(row)
            tables[f"pred_{shape}_{gb}"] = table(["layout"] + [f"{N}" for N in Ns], rows)
        rows = []
        for name, tp, pp in layouts:
            p = predict(shape, 1, tp, pp, clusters[0][1], shm, R, opt=opt)
            mm = p["mem_mib"]
            rows.append([name, f"{p['pr']}x{p['pc']}" if tp > 1 else "-",
                         f"{p['M']} x {p['tokens_per_step'] // p['M']}",
                         f"{mm['params_grads']:.0f}", f"{mm['adam']:.0f}",
                         f"{mm['activations']:.0f}", f"{mm['total']:.0f}",
                         f"{mm['params_grads'] + mm['activations']:.0f} + {mm['adam']:.0f} / dp"])
        tables[f"mem_{shape}"] = table(["layout", "TP grid", "micro-batches x tokens",
                                        "params + grads MiB", "Adam MiB (zero=0)",
                                        "activations MiB", "total MiB (zero=0)",
                                        "total MiB with zero=1"], rows)

    # where the network starts to matter: dp at 256 ranks with ranks 10x and 100x faster
    rows = []
    for shape in SHAPES:
        s_ = SHAPES[shape]
        for gb, net in clusters:
            for f in (1, 10, 100):
                e = []
                for ov in (0, 1):
                    p = predict(shape, 256, 1, 1, net, shm, R * f, overlap=bool(ov), opt=opt)
                    one = s_["B"] * s_["T"] * R * f / step_flops(s_, s_["B"], s_["T"])
                    e.append((p["tokens_per_s"] / (256 * one), p["step_s"], p["parts"]["dp_sync"]))
                rows.append([shape, gb, f"{f}x ({R * f / 1e9:.0f} GFLOP/s)", f"{e[0][1]:.3f}",
                             f"{e[0][2]:.3f}", f"{e[0][0]:.3f}", f"{e[1][2]:.3f}", f"{e[1][0]:.3f}"])
    tables["dp_speed"] = table(["shape", "Gbit/s", "per-rank compute", "step s", "sync s",
                                "DP efficiency", "sync s exposed with overlap",
                                "DP efficiency with overlap"], rows)

    # the model's inputs
    s_w = SHAPES["wmt14"]
    P_base, P_w = n_params(base), n_params(s_w)
    inputs = [
        ["per-rank compute rate R", f"{R / 1e9:.1f} GFLOP/s of matmul FLOPs: base 64x32 steps of "
         f"{t_pair:.2f} s (mean of {len(pair_all) or len(alone)} 1-rank runs"
         f"{', one in each node at once' if pair_all else ''}); 1 rank alone: "
         + (f"{t_alone:.2f} s" if t_alone else "-")],
        ["base", f"{P_base / 1e6:.2f} M parameters ({4 * P_base / 2**20:.1f} MiB), "
         f"{F0 / 1e12:.3f} TFLOP a step of 64x32 tokens"],
        ["wmt14", f"{P_w / 1e6:.2f} M parameters ({4 * P_w / 2**20:.1f} MiB), "
         f"{step_flops(s_w, s_w['B'], s_w['T']) / 1e12:.3f} TFLOP a step of 128x32 tokens"],
        ["25 / 100 Gbit/s links", f"the {low} fits, beta x {25 / low_g:g} / x {100 / low_g:g}, "
         "alpha as measured"],
        ["TP", f"shared-memory fits; {opt['tp_call_s'] * 1e3:g} ms added per TP call"
         + (f" (the tp=2 point implies {tp_implied * 1e3:.2f} ms)" if tp_implied is not None else "")],
        ["overlap", f"backward = 2/3 of the compute; last bucket {opt['bucket_mb']:g} MiB; "
         f"phi = {opt['overlap_phi']:g}; tied embedding exposed: {opt['emb_exposed']}"],
    ]
    tables["inputs"] = table(["input", "value"], inputs)

    with open(os.path.join(mdir, "tables.txt"), "w") as f:
        for k, v in tables.items():
            f.write(f"<!-- scaling_model:begin {k} -->\n{v}\n<!-- scaling_model:end {k} -->\n\n")

    # 5. plots
    plots(outdir, mdir, png_dir, fits, rates, inbox, preds, layouts, Ns, clusters)

    if args.doc:
        doc = open(args.doc).read()
        for k, v in tables.items():
            pat = re.compile(r"(<!-- scaling_model:begin %s -->\n).*?(<!-- scaling_model:end %s -->)"
                             % (re.escape(k), re.escape(k)), re.S)
            doc, n = pat.subn(lambda mm: mm.group(1) + v + "\n" + mm.group(2), doc)
            if n == 0:
                print(f"scaling_model: {args.doc} has no marked table '{k}'", file=sys.stderr)
        open(args.doc, "w").write(doc)

    print(f"compute: {R / 1e9:.1f} GFLOP/s per rank (base step {t_pair:.2f} s); fits "
          "(alpha us, beta Gbit/s):")
    for r in rate_order(list(fits)):
        print("  " + r + ": " + ", ".join(
            f"{op} {fits[r][op]['alpha_s'] * 1e6:.0f} {fits[r][op]['beta_Bps'] / GBIT:.2f}"
            for op in OPS if op in fits[r]))
    for x in inbox:
        print(f"  {x['label']}: measured {x['measured']:.3f} s, predicted {x['predicted']:.3f} s, "
              f"{x['rel_err']:+.1%}: {'within' if abs(x['rel_err']) <= 0.15 else 'NOT within'} 15%"
              + (f" ({x['note']})" if x["note"] else ""))
    if tp_implied is not None:
        print(f"  TP: the tp=2 point implies {tp_implied * 1e3:.2f} ms of waiting per TP call")
    print(f"tables: {os.path.join(mdir, 'tables.txt')}; plots: {png_dir}/scaling.png, "
          f"{png_dir}/scaling_predict.png")


def plots(outdir, mdir, png_dir, fits, rates, inbox, preds, layouts, Ns, clusters):
    gp = []
    gp.append("set terminal pngcairo size 1200,460 font 'sans,9'")
    gp.append(f"set output '{os.path.join(png_dir, 'scaling.png')}'")
    gp.append("set multiplot layout 1,2")
    # (a) fits
    series = []
    for r in rate_order(list(fits)):
        for op in ("allreduce", "p2p"):
            if op not in fits[r]:
                continue
            path = os.path.join(outdir, f"comm_{r}.jsonl")
            pts = [(o["bytes"], o["seconds"]) for o in load_jsonl(path) if o.get("op") == op]
            dat = os.path.join(mdir, f"fit_{r}_{op}.dat")
            with open(dat, "w") as f:
                for b, t in pts:
                    f.write(f"{b} {t}\n")
            series.append((r, op, dat, fits[r][op]))
    gp.append("set logscale xy; set format x '%.0s%cB'; set format y '%.0s%cs'; "
              "set xlabel 'message bytes'; set ylabel 'time'; set key top left font ',8'; set grid")
    gp.append("set title 'bench\\_comm on 2 ranks: measured (points), alpha + bytes/beta (lines)'")
    cmds = []
    for i, (r, op, dat, f) in enumerate(series):
        col = i + 1
        cmds.append(f"'{dat}' u 1:2 w p pt {6 if op == 'p2p' else 7} lc {col} title '{r} {op}'")
        cmds.append(f"{f['alpha_s']:.6e} + x / {f['beta_Bps']:.6e} w l lc {col} notitle")
    gp.append("set xrange [2048:2.7e8]")
    gp.append("plot " + ", ".join(cmds))
    gp.append("unset logscale; set format x '%g'; set format y '%g'; unset xrange")
    # (b) measured in-box points against their predictions
    dat = os.path.join(mdir, "inbox.dat")
    with open(dat, "w") as f:
        for i, x in enumerate(inbox):
            f.write(f"{i} {x['measured']} {x['predicted']} \"{x['label']}\"\n")
    gp.append("set title 'in-box step time: measured (filled) and predicted (open), base'")
    gp.append("set xlabel ''; set ylabel 'step seconds'; set yrange [0:*]; set key top right")
    gp.append("set xtics rotate by 30 right font ',8'; set xrange [-0.5:%f]" % (len(inbox) - 0.5))
    gp.append(f"plot '{dat}' u 1:2:xtic(4) w p pt 7 ps 1.6 lc rgb '#1f77b4' title 'measured', "
              f"'' u 1:3 w p pt 6 ps 2.0 lw 2 lc rgb '#d62728' title 'predicted', "
              f"'' u 1:3:($3*0.85):($3*1.15) w yerrorbars pt -1 lc rgb '#d62728' title 'predicted +-15%'")
    gp.append("unset multiplot")
    # predictions
    gp.append("set terminal pngcairo size 1100,760 font 'sans,8'")
    gp.append(f"set output '{os.path.join(png_dir, 'scaling_predict.png')}'")
    gp.append("set multiplot layout 2,2")
    gp.append("set logscale x; unset logscale y; set format y '%g'; "
              "set xtics norotate font ',9' (2,4,8,16,32,64,128,256); set xrange [1.8:300]; "
              "set yrange [0:1.05]; set xlabel 'ranks'; "
              "set ylabel 'tokens/s over ranks x one rank''s tokens/s'; set key bottom left font ',8'")
    for shape in SHAPES:
        for gb, _ in clusters:
            cmds = []
            for i, (name, tp, pp) in enumerate(layouts):
                dat = os.path.join(mdir, f"pred_{shape}_{gb}_{i}.dat")
                with open(dat, "w") as f:
                    for p in preds:
                        if p["shape"] == shape and p["cluster_gbit"] == gb and p["layout"] == name \
                                and p["overlap"]:
                            f.write(f"{p['ranks']} {p['efficiency']} {p['tokens_per_s']}\n")
                cmds.append(f"'{dat}' u 1:2 w lp pt {i + 4} lc {i + 1} title '{name}'")
            for j, f in enumerate((10, 100)):
                dat = os.path.join(mdir, f"pred_{shape}_{gb}_dp{f}x.dat")
                with open(dat, "w") as fh:
                    for p in preds:
                        if p["shape"] == shape and p["cluster_gbit"] == gb and p.get("faster") == f:
                            fh.write(f"{p['ranks']} {p['efficiency']} {p['tokens_per_s']}\n")
                cmds.append(f"'{dat}' u 1:2 w l dt {2 + j} lw 2 lc rgb 'black' "
                            f"title 'dp, ranks {f}x faster'")
            gp.append(f"set title '{shape}: predicted scaling efficiency, {gb} Gbit/s links, "
                      "gradient overlap'")
            gp.append("plot " + ", ".join(cmds))
    gp.append("unset multiplot")
    script = os.path.join(mdir, "scaling.gp")
    open(script, "w").write("\n".join(gp) + "\n")
    r = subprocess.run(["gnuplot", script], capture_output=True, text=True)
    if r.returncode:
        print("scaling_model: gnuplot failed:\n" + r.stderr, file=sys.stderr)


if __name__ == "__main__":
    main()
