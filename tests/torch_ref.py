#!/usr/bin/python3
"""torch_ref.py: the PyTorch reference of docs/MODEL.md, checked against `mpiformer dump`.

Usage: tests/torch_ref.py CKPT.h5 DUMP.h5 [CKPT.h5 DUMP.h5 ...] [--norm pre|post]
           [--share none|decoder_io|all] [--heads H] [--label-smoothing EPS] [--loss-rtol 1e-6] [--grad-rtol 1e-4]
           [--grad-afloor 1e-6] [--perturb NAME] [--mutate M] [--self-test] [-q]

The model is rebuilt from docs/MODEL.md alone (not translated from src/model_*.c):
sinusoidal embeddings, Post-LN or Pre-LN encoder/decoder layers, fairseq's label-smoothed
cross entropy; or, for a dump of arch=encoder_classifier (/batch/tokens, /batch/labels),
the encoder with the RoBERTa classification head and plain cross-entropy over the rows. Keys not given on the command line (norm, share_embeddings, heads,
label_smoothing, enc_layers, dec_layers, d_model, ffn_dim) come from the checkpoint's
`config` attribute. The checkpoint's /model/<name> tensors are loaded (a shared tensor
once, under the first name of MODEL.md's table), the dump's batch (/batch/src, tgt_in,
tgt_out) is run forward and backward in float64, and compared with the dump's attributes
loss, nll, ntokens and with every /grad/<name> (gradients of the mean loss over non-pad
target tokens). A float32 run of the same reference is reported alongside as a yardstick
of what float32 rounding alone gives.

A gradient tensor passes when rel = ||g_c - g_t|| / ||g_t|| <= grad-rtol, or when its
error is at the rounding floor: ||g_c - g_t||_max <= grad-afloor * ||g_all||_max,
with g_all all reference gradients together (for tensors whose exact gradient is ~0,
e.g. the key biases, which softmax makes invariant). See docs/TESTING.md.

--perturb NAME adds 1% of its norm to one element of the dump's gradient NAME, and
--mutate M makes the reference deviate from MODEL.md in one detail (MUTATIONS below):
both exist to show that the test fails when the numbers are wrong. --self-test does
all of them (plus a gradient deleted from the dump) on the first pair, in the same
process, and counts each deviation that is detected as a passed check.

Prints one line per check and the closing "N passed, N failed"; exits 1 on any failure.
"""
import argparse
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD, BOS, EOS = 0, 2, 3
NEG_INF = float("-inf")

# Deliberate deviations from MODEL.md (--mutate, --self-test): each must make the
# comparison fail, which shows that the test sees that detail of the spec.
MUTATIONS = {
    "ln_eps": "LayerNorm eps 1e-3 instead of 1e-5",
    "ln_unbiased": "LayerNorm with the unbiased variance (/ (d - 1))",
    "pe_half": "positions f_i = exp(-i ln(10000) / half) instead of / (half - 1)",
    "pe_from_1": "positions counted from 1 instead of 0",
    "emb_scale": "embeddings not scaled by sqrt(d)",
    "attn_scale": "scores divided by sqrt(d) instead of sqrt(dh)",
    "no_src_mask": "source pad keys not masked",
    "no_causal": "decoder self-attention not causal",
    "eps_i": "eps_i = eps / V instead of eps / (V - 1)",
    "pre_final_ln": "Pre-LN without the final encoder/decoder layer_norm; Post-LN with one",
}
MUT = set()


# ----------------------------------------------------------------------------- model


class Linear(nn.Module):
    """y = x W^T + b with W of shape (out, in)."""

    def __init__(self, n_in, n_out, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x):
        y = x @ self.weight.t()
        return y + self.bias if self.bias is not None else y


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim, biased variance."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        eps = 1e-3 if "ln_eps" in MUT else 1e-5
        if "ln_unbiased" in MUT:
            var = var * x.shape[-1] / (x.shape[-1] - 1)
        return (x - mean) / torch.sqrt(var + eps) * self.weight + self.bias


class MultiheadAttention(nn.Module):
    """MHA(x, m, mask): queries from x (B, n, d), keys/values from m (B, s, d); mask is
    additive, broadcastable to (B, H, n, s), 0 or -inf."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.q_proj, self.k_proj = Linear(d, d), Linear(d, d)
        self.v_proj, self.out_proj = Linear(d, d), Linear(d, d)

    def forward(self, x, m, mask):
        b, n, d = x.shape
        s = m.shape[1]
        q = self.q_proj(x).view(b, n, self.heads, self.dh).transpose(1, 2)  # (B, H, n, dh)
        k = self.k_proj(m).view(b, s, self.heads, self.dh).transpose(1, 2)  # (B, H, s, dh)
        v = self.v_proj(m).view(b, s, self.heads, self.dh).transpose(1, 2)
        scale = math.sqrt(d if "attn_scale" in MUT else self.dh)
        scores = q @ k.transpose(-1, -2) / scale + mask  # (B, H, n, s)
        p = torch.softmax(scores, dim=-1)
        o = (p @ v).transpose(1, 2).reshape(b, n, d)  # concat_h(O_h)
        return self.out_proj(o)


class EncoderLayer(nn.Module):
    def __init__(self, d, ffn, heads, norm):
        super().__init__()
        self.norm = norm
        self.self_attn = MultiheadAttention(d, heads)
        self.self_attn_layer_norm = LayerNorm(d)
        self.fc1, self.fc2 = Linear(d, ffn), Linear(ffn, d)
        self.final_layer_norm = LayerNorm(d)

    def ffn(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def forward(self, x, src_mask):
        if self.norm == "post":
            x = self.self_attn_layer_norm(x + self.self_attn(x, x, src_mask))
            return self.final_layer_norm(x + self.ffn(x))
        h = self.self_attn_layer_norm(x)
        x = x + self.self_attn(h, h, src_mask)
        return x + self.ffn(self.final_layer_norm(x))


class DecoderLayer(nn.Module):
    def __init__(self, d, ffn, heads, norm):
        super().__init__()
        self.norm = norm
        self.self_attn = MultiheadAttention(d, heads)
        self.self_attn_layer_norm = LayerNorm(d)
        self.encoder_attn = MultiheadAttention(d, heads)
        self.encoder_attn_layer_norm = LayerNorm(d)
        self.fc1, self.fc2 = Linear(d, ffn), Linear(ffn, d)
        self.final_layer_norm = LayerNorm(d)

    def ffn(self, y):
        return self.fc2(torch.relu(self.fc1(y)))

    def forward(self, y, enc, causal, src_mask):
        if self.norm == "post":
            y = self.self_attn_layer_norm(y + self.self_attn(y, y, causal))
            y = self.encoder_attn_layer_norm(y + self.encoder_attn(y, enc, src_mask))
            return self.final_layer_norm(y + self.ffn(y))
        h = self.self_attn_layer_norm(y)
        y = y + self.self_attn(h, h, causal)
        y = y + self.encoder_attn(self.encoder_attn_layer_norm(y), enc, src_mask)
        return y + self.ffn(self.final_layer_norm(y))


class Embedding(nn.Module):
    def __init__(self, v, d):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(v, d))


def sinusoidal(n, d, dtype):
    """PE (n, d): PE[t, i] = sin(t f_i), PE[t, half + i] = cos(t f_i),
    f_i = exp(-i ln(10000) / (half - 1)), positions from 0 at the first column."""
    half = d // 2
    denom = half if "pe_half" in MUT else half - 1
    f = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / denom))
    t0 = 1 if "pe_from_1" in MUT else 0
    a = torch.arange(t0, t0 + n, dtype=torch.float64)[:, None] * f[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1).to(dtype)


class Stack(nn.Module):
    """encoder or decoder: embed_tokens, layers, and layer_norm (Pre-LN only)."""

    def __init__(self, layer_cls, n, v, d, ffn, heads, norm, output_projection=False):
        super().__init__()
        self.embed_tokens = Embedding(v, d)
        self.layers = nn.ModuleList([layer_cls(d, ffn, heads, norm) for _ in range(n)])
        if norm == "pre":
            self.layer_norm = LayerNorm(d)
        if output_projection:
            self.output_projection = Linear(d, v, bias=False)

    def embed(self, tokens, weight):
        d = weight.shape[1]
        pe = sinusoidal(tokens.shape[1], d, weight.dtype)
        scale = 1.0 if "emb_scale" in MUT else math.sqrt(d)
        return scale * weight[tokens] + pe[None, :, :]


def encode(stack, norm, src, enc_w):
    """The encoder (MODEL.md): (output (B, S, d), additive pad mask (B, 1, 1, S))."""
    zero = torch.zeros((), dtype=enc_w.dtype)
    src_mask = torch.where(src == PAD, torch.full((), NEG_INF, dtype=enc_w.dtype), zero)
    src_mask = src_mask[:, None, None, :]  # (B, 1, 1, S): mask pad keys
    if "no_src_mask" in MUT:
        src_mask = torch.zeros_like(src_mask)
    x = stack.embed(src, enc_w)
    for layer in stack.layers:
        x = layer(x, src_mask)
    if norm == "pre" and "pre_final_ln" not in MUT:
        x = stack.layer_norm(x)
    elif norm == "post" and "pre_final_ln" in MUT:
        x = F.layer_norm(x, x.shape[-1:], eps=1e-5)
    return x, src_mask


class ClassificationHead(nn.Module):
    """fairseq's RoBERTa head without dropout: out_proj(tanh(dense(x)))."""

    def __init__(self, d, n_classes):
        super().__init__()
        self.dense, self.out_proj = Linear(d, d), Linear(d, n_classes)

    def forward(self, x):
        return self.out_proj(torch.tanh(self.dense(x)))


class Classifier(nn.Module):
    """arch=encoder_classifier (MODEL.md, "Sentence-pair classifier"): the encoder, then
    the head on the encoder output of column 0 (bos)."""

    def __init__(self, v, d, ffn, heads, enc_layers, norm, n_classes, **_):
        super().__init__()
        self.norm = norm
        self.encoder = Stack(EncoderLayer, enc_layers, v, d, ffn, heads, norm)
        self.classification_heads = nn.ModuleDict(
            {"sentence_classification_head": ClassificationHead(d, n_classes)})

    def forward(self, tokens):
        """logits (B, C) of rows `bos a eos b eos` (B, S)."""
        x, _ = encode(self.encoder, self.norm, tokens, self.encoder.embed_tokens.weight)
        return self.classification_heads["sentence_classification_head"](x[:, 0, :])


def make_model(model_def):
    if model_def.get("n_classes"):
        return Classifier(**model_def)
    return Transformer(**{k: v for k, v in model_def.items() if k != "n_classes"})


class Transformer(nn.Module):
    def __init__(self, v, d, ffn, heads, enc_layers, dec_layers, norm, share):
        super().__init__()
        self.norm, self.share = norm, share
        self.encoder = Stack(EncoderLayer, enc_layers, v, d, ffn, heads, norm)
        self.decoder = Stack(DecoderLayer, dec_layers, v, d, ffn, heads, norm,
                             output_projection=(share == "none"))
        # Sharing: one Parameter under the first name of MODEL.md's table.
        if share == "all":
            del self.decoder.embed_tokens

    def tied(self):
        """(encoder input, decoder input, output projection) weights per share_embeddings."""
        enc_w = self.encoder.embed_tokens.weight
        if self.share == "all":
            return enc_w, enc_w, enc_w
        dec_w = self.decoder.embed_tokens.weight
        if self.share == "decoder_io":
            return enc_w, dec_w, dec_w
        return enc_w, dec_w, self.decoder.output_projection.weight

    def forward(self, src, tgt_in):
        """logits (B, T, V) of tgt_out given src (B, S) and tgt_in (B, T)."""
        enc_w, dec_w, out_w = self.tied()
        x, src_mask = encode(self.encoder, self.norm, src, enc_w)
        zero = torch.zeros((), dtype=enc_w.dtype)
        t = tgt_in.shape[1]
        future = torch.arange(t)[None, :] > torch.arange(t)[:, None]  # key s > query t
        causal = torch.where(future, torch.full((), NEG_INF, dtype=enc_w.dtype), zero)
        if "no_causal" in MUT:
            causal = torch.zeros_like(causal)
        y = self.decoder.embed(tgt_in, dec_w)
        for layer in self.decoder.layers:
            y = layer(y, x, causal, src_mask)
        if self.norm == "pre" and "pre_final_ln" not in MUT:
            y = self.decoder.layer_norm(y)
        elif self.norm == "post" and "pre_final_ln" in MUT:
            y = F.layer_norm(y, y.shape[-1:], eps=1e-5)
        return y @ out_w.t()


def label_smoothed_loss(logits, tgt_out, eps):
    """(sum of loss, sum of nll, n tokens) over positions with tgt_out != pad:
    loss = (1 - eps - eps_i) nll + eps_i (-sum_j lp_j), eps_i = eps / (V - 1)."""
    v = logits.shape[-1]
    keep = tgt_out != PAD
    lp = torch.log_softmax(logits[keep], dim=-1)  # (N, V)
    nll = -lp.gather(1, tgt_out[keep][:, None].long())[:, 0]
    smooth = -lp.sum(dim=-1)
    eps_i = eps / (v if "eps_i" in MUT else v - 1)
    loss = (1.0 - eps - eps_i) * nll + eps_i * smooth
    return loss.sum(), nll.sum(), int(keep.sum())


# ----------------------------------------------------------------------------- checking


def parse_config(text):
    cfg = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            k, v = line.split("=", 1)
            cfg[k.strip()] = v.strip()
    return cfg


def expected_names(model):
    """The parameter names the spec gives for this configuration (shared ones once)."""
    return [n for n, _ in model.named_parameters()]


def run_reference(model_def, ckpt, batch, eps, dtype):
    """Build the model in dtype, load the checkpoint, forward/backward the mean loss.
    Returns (loss, nll, ntok, {name: grad as float64 numpy})."""
    model = make_model(model_def).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(ckpt[name]).to(dtype))
    if "labels" in batch:  # classifier: cross-entropy over the rows, no label smoothing
        logits = model(torch.from_numpy(batch["tokens"]).long())
        labels = torch.from_numpy(batch["labels"]).long()
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        nll_sum, ntok = loss_sum, labels.shape[0]
    else:
        src, tgt_in, tgt_out = (torch.from_numpy(batch[k]).long() for k in ("src", "tgt_in", "tgt_out"))
        logits = model(src, tgt_in)
        loss_sum, nll_sum, ntok = label_smoothed_loss(logits, tgt_out, eps)
    loss = loss_sum / ntok
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().to(torch.float64).numpy()
             for n, p in model.named_parameters()}
    return float(loss), float(nll_sum) / ntok, ntok, grads


class Tally:
    """Counts checks; prints each (quiet: failures only; silent: nothing)."""

    def __init__(self, quiet=False, silent=False):
        self.passed = self.failed = 0
        self.quiet, self.silent = quiet, silent
        self.worst = (0.0, "")  # largest relative error and its check

    def check(self, ok, line, rel=0.0):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        if rel >= self.worst[0] and rel < math.inf:
            self.worst = (rel, line.split()[0])
        if not self.silent and (not ok or not self.quiet):
            print("  %s  %s" % ("ok  " if ok else "FAIL", line))


def check_pair(a, t, ckpt_path, dump_path, perturb=None, drop=None, f32=True):
    """Compare one (checkpoint, dump) pair; results go to tally t. perturb: add 1% of its
    norm to one element of the dump's gradient of that name; drop: delete that gradient
    from the dump (both for the self-test). f32: also run the float32 yardstick."""
    with h5py.File(ckpt_path, "r") as f:
        raw = f.attrs.get("config", b"")
        cfg = parse_config(raw.decode() if isinstance(raw, bytes) else str(raw))
        ckpt = {n: np.asarray(d[()], dtype=np.float64) for n, d in f["model"].items()}
    with h5py.File(dump_path, "r") as f:
        batch = {k: np.asarray(d[()], dtype=np.int64) for k, d in f["batch"].items()}
        grads_c = {n: np.asarray(d[()], dtype=np.float64) for n, d in f["grad"].items()}
        c_loss, c_nll, c_ntok = (float(f.attrs[k]) for k in ("loss", "nll", "ntokens"))

    def key(opt, name, conv):
        if opt is not None:
            return opt
        if name not in cfg:
            sys.exit("torch_ref: %s: --%s not given and not in the checkpoint's config"
                     % (ckpt_path, name))
        return conv(cfg[name])

    enc_w = ckpt.get("encoder.embed_tokens.weight")
    if enc_w is None:
        sys.exit("torch_ref: %s has no /model/encoder.embed_tokens.weight" % ckpt_path)
    v, d = enc_w.shape
    clf = "labels" in batch
    head = "classification_heads.sentence_classification_head.out_proj.weight"
    model_def = dict(v=v, d=d, ffn=key(None, "ffn_dim", int), heads=key(a.heads, "heads", int),
                     enc_layers=key(None, "enc_layers", int), dec_layers=key(None, "dec_layers", int),
                     norm=key(a.norm, "norm", str), share=key(a.share, "share_embeddings", str),
                     n_classes=ckpt[head].shape[0] if clf and head in ckpt else 0)
    if clf and not model_def["n_classes"]:
        sys.exit("torch_ref: %s: a classifier dump but no %s in the checkpoint" % (ckpt_path, head))
    eps = 0.0 if clf else key(a.label_smoothing, "label_smoothing", float)
    if d != key(None, "d_model", int):
        sys.exit("torch_ref: %s: embedding width %d but d_model %s" % (ckpt_path, d, cfg["d_model"]))
    if not t.silent and clf:
        print("torch_ref: %s vs %s\n  classifier norm=%s V=%d d=%d F=%d H=%d layers=%d C=%d"
              " | batch %dx%d rows, %.0f%% pad"
              % (ckpt_path, dump_path, model_def["norm"], v, d, model_def["ffn"], model_def["heads"],
                 model_def["enc_layers"], model_def["n_classes"], *batch["tokens"].shape,
                 100.0 * (batch["tokens"] == PAD).mean()))
    elif not t.silent:
        n_pad = int((batch["src"] == PAD).sum() + (batch["tgt_out"] == PAD).sum())
        n_all = batch["src"].size + batch["tgt_out"].size
        print("torch_ref: %s vs %s\n  norm=%s share=%s V=%d d=%d F=%d H=%d layers=%d+%d label_smoothing=%g"
              " | batch %dx%d src, %dx%d tgt, %.0f%% pad"
              % (ckpt_path, dump_path, model_def["norm"], model_def["share"], v, d, model_def["ffn"],
                 model_def["heads"], model_def["enc_layers"], model_def["dec_layers"], eps,
                 *batch["src"].shape, *batch["tgt_in"].shape, 100.0 * n_pad / n_all))
    if drop:
        del grads_c[drop]

    names = expected_names(make_model(model_def))
    for what, have in (("checkpoint /model", ckpt), ("dump /grad", grads_c)):
        missing = [n for n in names if n not in have]
        extra = [n for n in have if n not in names]
        t.check(not missing and not extra, "%s holds exactly the %d spec tensors%s%s" % (
            what, len(names), "; missing: " + ", ".join(missing) if missing else "",
            "; unexpected: " + ", ".join(extra) if extra else ""))
    ref_shapes = {n: tuple(p.shape) for n, p in make_model(model_def).named_parameters()}
    bad = [n for n in names if n in ckpt and ckpt[n].shape != ref_shapes[n]]
    t.check(not bad, "checkpoint shapes are the spec's%s" % (": " + ", ".join(bad) if bad else ""))
    if any(n not in ckpt for n in names) or bad:
        return

    if perturb:
        g = grads_c.get(perturb)
        if g is None:
            sys.exit("torch_ref: --perturb %s: no such gradient" % perturb)
        g.flat[g.size // 2] += 0.01 * np.linalg.norm(g)

    loss64, nll64, ntok, g64 = run_reference(model_def, ckpt, batch, eps, torch.float64)
    if f32:
        loss32, nll32, _, g32 = run_reference(model_def, ckpt, batch, eps, torch.float32)
    else:
        loss32, nll32, g32 = loss64, nll64, g64

    t.check(int(c_ntok) == ntok, "ntokens: C %d, reference %d (%s)" % (int(c_ntok), ntok,
            "rows" if clf else "non-pad tgt_out"))
    for what, c, r, r32 in (("loss", c_loss, loss64, loss32), ("nll", c_nll, nll64, nll32)):
        rel = abs(c - r) / abs(r)
        t.check(rel <= a.loss_rtol, "%-4s C %.9f  ref %.9f  rel %.2e  (f32 ref rel %.2e; tol %.0e)"
                % (what, c, r, rel, abs(r32 - r) / abs(r), a.loss_rtol), rel)

    gmax = max(float(np.abs(g).max()) for g in g64.values())
    floor = a.grad_afloor * gmax
    worst = []
    for n in names:
        if n not in grads_c or grads_c[n].shape != g64[n].shape:
            t.check(False, "%s: gradient missing or of the wrong shape in the dump" % n)
            continue
        gc, gt = grads_c[n], g64[n]
        diff = gc - gt
        mabs = float(np.abs(diff).max())
        nt = float(np.linalg.norm(gt))
        rel = float(np.linalg.norm(diff)) / nt if nt > 0 else (0.0 if mabs == 0 else math.inf)
        rel32 = float(np.linalg.norm(g32[n] - gt)) / nt if nt > 0 else 0.0
        ok = rel <= a.grad_rtol or mabs <= floor
        if nt > floor:
            worst.append((rel, n))
        t.check(ok, "%-50s max_abs %.2e  rel %.2e  |g| %.2e  (f32 ref rel %.2e)%s"
                % (n, mabs, rel, nt, rel32, "" if rel <= a.grad_rtol else "  [abs floor %.1e]" % floor),
                rel if nt > floor else 0.0)
    worst.sort(reverse=True)
    if not t.silent:
        print("  largest gradient rel errors (|g| above the floor): "
          + ", ".join("%s %.2e" % (n, r) for r, n in worst[:3])
              + " | abs floor %.1e" % floor)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pairs", nargs="+", metavar="CKPT DUMP", help="one or more checkpoint/dump pairs")
    ap.add_argument("--norm", choices=["pre", "post"])
    ap.add_argument("--share", choices=["none", "decoder_io", "all"])
    ap.add_argument("--heads", type=int)
    ap.add_argument("--label-smoothing", type=float)
    ap.add_argument("--loss-rtol", type=float, default=1e-6, help="loss and nll relative tolerance")
    ap.add_argument("--grad-rtol", type=float, default=1e-4, help="||g_c - g_t|| / ||g_t|| tolerance")
    ap.add_argument("--grad-afloor", type=float, default=1e-6,
                    help="or max |g_c - g_t| <= this times the largest |g_t| element of all tensors")
    ap.add_argument("--perturb", metavar="NAME", help="perturb the dump's gradient NAME (must fail)")
    ap.add_argument("--mutate", choices=sorted(MUTATIONS), action="append", default=[],
                    help="deviate from MODEL.md in the reference (must fail)")
    ap.add_argument("--self-test", action="store_true",
                    help="also check that every mutation, a perturbed and a missing gradient are "
                         "detected on the first pair")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    a = ap.parse_args(argv)
    if len(a.pairs) % 2:
        ap.error("give CKPT DUMP pairs")
    torch.set_num_threads(1)
    MUT.update(a.mutate)
    t = Tally(a.quiet)
    for i in range(0, len(a.pairs), 2):
        check_pair(a, t, a.pairs[i], a.pairs[i + 1], perturb=a.perturb)
    if a.self_test:
        print("self-test on %s: each deviation must fail" % a.pairs[1])
        cases = [("mutation " + m, MUTATIONS[m], {m}, {}) for m in sorted(MUTATIONS)]
        g = "decoder.layers.0.fc1.bias"
        cases.append(("perturbed gradient", g + " + 1% of its norm in one element", set(), {"perturb": g}))
        cases.append(("missing gradient", g + " deleted from the dump", set(), {"drop": g}))
        for name, what, mut, kw in cases:
            MUT.clear()
            MUT.update(mut)
            sub = Tally(silent=True)
            check_pair(a, sub, a.pairs[0], a.pairs[1], f32=False, **kw)
            t.check(sub.failed > 0, "self-test %-20s %-66s -> %d of %d checks fail (largest: %s rel %.1e)"
                    % (name, "(" + what + ")", sub.failed, sub.failed + sub.passed, sub.worst[1],
                       sub.worst[0]))
        MUT.clear()
    print("%d passed, %d failed" % (t.passed, t.failed))
    return 0 if t.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
