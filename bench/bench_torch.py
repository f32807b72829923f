#!/usr/bin/python3
"""bench_torch.py: PyTorch 1.13 (Debian, CPU) training the same shapes as bench_model.c
on a fixed batch, for the side-by-side ratio in `make bench`.

    /usr/bin/python3 bench/bench_torch.py SHAPE THREADS [B T STEPS [PRECISION]]

nn.Transformer (Pre-LN: norm_first=True), shared embeddings scaled by sqrt(d),
sinusoidal positions, label-smoothed cross-entropy, Adam: one step = forward, backward,
Adam, like mpiformer's. PRECISION fp32 (default) or bf16: the forward and the loss under
torch.autocast("cpu", dtype=torch.bfloat16) (PyTorch's CPU mixed precision: fp32 weights and
Adam, matmuls in bf16), the backward outside it as PyTorch prescribes. Prints one JSON line
with target tokens/s and the precision.
"""
import json
import math
import sys
import time

import torch
import torch.nn as nn


def main():
    shape = sys.argv[1] if len(sys.argv) > 1 else "small"
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    B = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    T = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    precision = sys.argv[6] if len(sys.argv) > 6 else "fp32"
    if precision not in ("fp32", "bf16"):
        sys.exit(f"bench_torch.py: PRECISION {precision}: expected fp32 or bf16")
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    d, layers = (256, 3) if shape == "small" else (512, 6)
    V = 8000
    emb = nn.Embedding(V, d)
    tr = nn.Transformer(d_model=d, nhead=4, num_encoder_layers=layers, num_decoder_layers=layers,
                        dim_feedforward=1024, dropout=0.1, batch_first=True, norm_first=True)
    params = list(emb.parameters()) + list(tr.parameters())
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-8)
    src = torch.randint(4, V, (B, T))
    tgt = torch.randint(4, V, (B, T))
    tin = torch.cat([torch.full((B, 1), 2), tgt[:, :-1]], 1)
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    half = d // 2
    freq = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 1))
    pe = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], 1)
    mask = tr.generate_square_subsequent_mask(T)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            x = emb(src) * math.sqrt(d) + pe
            y = emb(tin) * math.sqrt(d) + pe
            h = tr(x, y, tgt_mask=mask)
            logits = h @ emb.weight.t()
            loss = loss_fn(logits.reshape(-1, V), tgt.reshape(-1))
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    print(json.dumps({"shape": shape, "torch_threads": threads, "batch": f"{B}x{T}",
                      "tokens_per_s": round(B * T * steps / dt, 1),
                      "step_s": round(dt / steps, 3), "precision": precision,
                      "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
