#!/usr/bin/env python3
"""PyTorch side of the per-op GPU micro-benchmark (bench/gpu_ops.rs): the same pieces of one `1b_mtp`
block at B×2048 tokens in bf16, synchronised median of 5, JSON lines {"op", "ms"} with the same names.

    python3 bench/gpu/ops_reference.py            # B=8 (env B)
"""
import json
import os
import time

import torch
import torch.nn.functional as F

sys_path = os.path.dirname(os.path.abspath(__file__))
import sys  # noqa: E402

sys.path.insert(0, sys_path)
from reference import Block, PRESETS, rope_tables  # noqa: E402


def timed(name, fn):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"op": name, "ms": round(sorted(ts)[2], 3)}), flush=True)


def main():
    b, t = int(os.environ.get("B", 8)), 2048
    dev = "cuda"
    bf = torch.bfloat16
    x = torch.randn(b, t, 2048, device=dev, dtype=bf)
    dy = torch.randn_like(x)
    w = torch.randn(2048, 2048, device=dev, dtype=bf) * 0.02
    w1 = torch.randn(5632, 2048, device=dev, dtype=bf) * 0.02
    timed("linear 2048x2048 fwd", lambda: F.linear(x, w))

    def lin_bwd():
        xv = x.detach().requires_grad_()
        F.linear(xv, w).backward(dy)
    timed("linear 2048x2048 fwd+bwd(dx)", lin_bwd)
    timed("linear 2048->5632 fwd", lambda: F.linear(x, w1))
    q, k, v = (torch.randn(b, 16, t, 128, device=dev, dtype=bf) for _ in range(3))
    timed("attention sdpa fwd", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def attn_bwd():
        qv, kv, vv = (z.detach().requires_grad_() for z in (q, k, v))
        F.scaled_dot_product_attention(qv, kv, vv, is_causal=True).backward(torch.randn_like(qv))
    timed("attention sdpa fwd+bwd", attn_bwd)
    a = PRESETS["1b_mtp"]
    blk = Block(dict(a), {"wq", "wk", "wv", "wo"}, 8, 16.0).to(dev)
    for n, p in blk.named_parameters():
        if not (n.endswith(".a") or n.endswith(".b")):
            p.requires_grad_(False)
            p.data = p.data.to(bf)
    cis = rope_tables(128, 1e4, t, dev)
    with torch.autocast("cuda", dtype=bf):
        timed("LoRA block torch fwd", lambda: blk(x, cis))

        def blk_bwd():
            xv = x.detach().requires_grad_()
            blk(xv, cis).backward(dy)
        timed("LoRA block torch fwd+bwd", blk_bwd)


if __name__ == "__main__":
    main()
