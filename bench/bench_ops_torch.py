#!/usr/bin/python3
"""bench_ops_torch.py: PyTorch CPU timings of the operations that bench_ops.c times, at the
same sizes, for a like-for-like comparison (run with /usr/bin/python3, Debian's torch).

    OMP_NUM_THREADS=1 /usr/bin/python3 bench/bench_ops_torch.py [B T d H V]
"""
import json
import sys
import time

import torch
import torch.nn.functional as F


def bench(name, fn):
    fn()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        t = time.perf_counter() - t0
        if t >= 0.3 and reps >= 3:
            break
    print(json.dumps({"op": name, "ms": round(1e3 * t / reps, 4)}), flush=True)


def main():
    a = [int(v) for v in sys.argv[1:]]
    B, T, d, H, V = (a + [64, 32, 512, 8, 8000][len(a):])[:5]
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    n, dh = B * T, d // H
    print(json.dumps({"B": B, "T": T, "d": d, "H": H, "V": V, "threads": torch.get_num_threads()}))
    x = torch.rand(n, d) * 2 - 1
    dy = torch.rand(n, d) * 2 - 1
    g, b = torch.rand(d), torch.rand(d)
    xr = x.clone().requires_grad_()
    gr, br = g.clone().requires_grad_(), b.clone().requires_grad_()
    bench("layernorm_forward", lambda: F.layer_norm(x, (d,), g, b, 1e-5))
    y = F.layer_norm(xr, (d,), gr, br, 1e-5)
    bench("layernorm_backward", lambda: torch.autograd.grad(y, (xr, gr, br), dy, retain_graph=True))
    bench("relu_forward", lambda: torch.relu(x))
    yr = torch.relu(xr)
    bench("relu_backward", lambda: torch.autograd.grad(yr, xr, dy, retain_graph=True))
    bench("dropout_0.1", lambda: F.dropout(x, 0.1, True))
    bench("add", lambda: torch.add(x, dy))
    pe = torch.rand(T, d)  # fairseq adds a (T, d) table it has computed once
    bench("positions_add", lambda: x.view(B, T, d).add_(pe))

    qkv = (torch.rand(n, 3 * d) * 2 - 1).requires_grad_()
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1::2, T - 1] = True
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)

    def attn(p):
        q, k, v = qkv.view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # (B, H, T, dh) each
        s = (q @ k.transpose(-1, -2)) / dh**0.5
        s = s.masked_fill(causal, float("-inf")).masked_fill(pad[:, None, None, :], float("-inf"))
        pr = torch.softmax(s, -1)
        pr = F.dropout(pr, p, True) if p > 0 else pr
        return (pr @ v).permute(0, 2, 1, 3).reshape(n, d)

    for p, tag in ((0.0, ""), (0.1, "_drop0.1")):
        with torch.no_grad():
            bench("attention_forward" + tag, lambda: attn(p))
        o = attn(p)
        bench("attention_backward" + tag,
              lambda: torch.autograd.grad(o, qkv, dy, retain_graph=True))

    logits = (torch.rand(n, V) * 2 - 1).requires_grad_()
    tgt = torch.tensor([(i * 7919) % V for i in range(n)])

    def xent():  # fairseq label_smoothed_nll_loss, sum reduction, with the gradient
        lp = F.log_softmax(logits, -1)
        nll = -lp.gather(-1, tgt[:, None]).squeeze(-1)
        smooth = -lp.sum(-1)
        m = tgt != 1
        eps, epsi = 0.1, 0.1 / (V - 1)
        loss = ((1 - eps - epsi) * nll[m] + epsi * smooth[m]).sum()
        torch.autograd.grad(loss, logits)

    bench("xent_loss_and_grad", xent)

    # the optimizer over 16M parameters: grads scaled and their norm, then Adam (foreach)
    params = [torch.rand(16 << 20).requires_grad_()]
    params[0].grad = torch.rand(16 << 20)
    opt = torch.optim.Adam(params, lr=1e-4)

    def sync():
        params[0].grad.mul_(1.0)
        return params[0].grad.norm()

    bench("sync_grads_16M", sync)
    bench("adam_update_16M", opt.step)


if __name__ == "__main__":
    main()
