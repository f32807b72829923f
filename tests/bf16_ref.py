#!/usr/bin/python3
"""bf16_ref.py: the yardstick of tests/test_bf16.sh: how far PyTorch 1.13's CPU bf16 autocast
moves the training-loss curve of a tiny model away from its fp32 curve.

Usage: tests/bf16_ref.py CKPT.h5 DATA.h5 [--steps 300] [--max-tokens 160] [--seed 1]

The model is torch_ref.py's twin of docs/MODEL.md (translation, dropout 0), loaded from the
mpiformer checkpoint CKPT.h5 (its `config` gives the shape, lr, beta1, beta2, adam_eps and
label_smoothing; constant lr). It is trained twice for --steps Adam updates on the same
batches of DATA.h5's train split (shuffled per epoch with --seed, packed up to --max-tokens
padded tokens): once in fp32 and once under torch.autocast("cpu", torch.bfloat16), the
mixed precision PyTorch users get (it rounds matmul inputs to bf16 and, unlike mpiformer,
also keeps the matmul outputs and much of what follows in bf16; the loss is taken in fp32).
Prints one JSON object: the mean |loss_bf16 - loss_fp32| over the windows [0,100),
[100,200), [200,300) (as many as --steps covers) and the mean fp32 loss of each window.
"""
import argparse
import json
import math
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ref  # noqa: E402  (the twin model)

BOS, EOS, PAD = torch_ref.BOS, torch_ref.EOS, torch_ref.PAD


def batches(data, max_tokens, seed, n_steps):
    with h5py.File(data, "r") as f:
        sides = []
        for side in ("src", "tgt"):
            tok, off = f["train/%s/tokens" % side][()], f["train/%s/offsets" % side][()]
            sides.append([tok[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)])
    src, tgt = sides
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_steps:
        order = rng.permutation(len(src))
        cur = []
        for i in order:
            trial = cur + [i]
            width = max(max(len(src[j]), len(tgt[j])) + 1 for j in trial)
            if cur and len(trial) * width > max_tokens:
                out.append(cur)
                cur = [i]
            else:
                cur = trial
        if cur:
            out.append(cur)
    made = []
    for b in out[:n_steps]:
        S = max(len(src[j]) for j in b) + 1
        T = max(len(tgt[j]) for j in b) + 1
        s = np.full((len(b), S), PAD, np.int64)
        ti = np.full((len(b), T), PAD, np.int64)
        to = np.full((len(b), T), PAD, np.int64)
        for r, j in enumerate(b):
            s[r, :len(src[j]) + 1] = src[j] + [EOS]
            ti[r, :len(tgt[j]) + 1] = [BOS] + tgt[j]
            to[r, :len(tgt[j]) + 1] = tgt[j] + [EOS]
        made.append(tuple(torch.from_numpy(x) for x in (s, ti, to)))
    return made


def train(model_def, ckpt, cfg, data, bf16):
    torch.manual_seed(0)
    model = torch_ref.make_model(model_def)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(ckpt[name]).float())
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]),
                           betas=(float(cfg.get("beta1", 0.9)), float(cfg.get("beta2", 0.98))),
                           eps=float(cfg.get("adam_eps", 1e-8)))
    eps = float(cfg.get("label_smoothing", 0.1))
    losses = []
    for src, tin, tout in data:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(src, tin)
        loss_sum, _, ntok = torch_ref.label_smoothed_loss(logits.float(), tout, eps)
        loss = loss_sum / ntok
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    with h5py.File(a.ckpt, "r") as f:
        raw = f.attrs.get("config", b"")
        cfg = torch_ref.parse_config(raw.decode() if isinstance(raw, bytes) else str(raw))
        ckpt = {n: np.asarray(d[()], dtype=np.float32) for n, d in f["model"].items()}
    v, d = ckpt["encoder.embed_tokens.weight"].shape
    model_def = dict(v=v, d=d, ffn=int(cfg["ffn_dim"]), heads=int(cfg["heads"]),
                     enc_layers=int(cfg["enc_layers"]), dec_layers=int(cfg["dec_layers"]),
                     norm=cfg["norm"], share=cfg["share_embeddings"], n_classes=0)
    data = batches(a.data, a.max_tokens, a.seed, a.steps)
    f32 = train(model_def, ckpt, cfg, data, False)
    b16 = train(model_def, ckpt, cfg, data, True)
    out = {"steps": a.steps, "windows": []}
    for lo in range(0, a.steps, 100):
        hi = min(lo + 100, a.steps)
        diff = [abs(x - y) for x, y in zip(f32[lo:hi], b16[lo:hi])]
        out["windows"].append({"lo": lo, "hi": hi, "mean_abs_diff": sum(diff) / len(diff),
                               "fp32_mean": sum(f32[lo:hi]) / (hi - lo),
                               "bf16_mean": sum(b16[lo:hi]) / (hi - lo)})
    if not all(math.isfinite(x) for x in f32 + b16):
        sys.exit("bf16_ref: a non-finite loss")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
