#!/usr/bin/env python3
"""PyTorch side of the per-op GPU micro-benchmark (bench/gpu_ops.rs): the same pieces of one `1b_mtp`
block at B×2048 tokens in bf16, synchronised median of 5, JSON lines {"op", "ms"} with the same names.

    python3 bench/gpu/ops_reference.py            # B=8 (env B)
    ATTN_SWEEP=1 python3 bench/gpu/ops_reference.py --ours ours.jsonl   # attention only, with ratios

`ATTN_SWEEP=1`: SDPA alone (PyTorch's choice of backend: cuDNN or flash) at 16,384 tokens × 2,048 features
for T ∈ {2048, 4096}, D ∈ {64, 128}, causal, bf16 — the forward, and the backward alone
(`torch.autograd.grad` of a kept forward) — under the names bench/gpu_ops.rs's `ATTN_SWEEP=1` prints;
`--ours FILE` (its output; repeatable, one SDPA run for several builds) adds a line per op with ours/SDPA time.
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


TIMES = {}


def timed(name, fn):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    TIMES[name] = round(sorted(ts)[2], 3)
    print(json.dumps({"op": name, "ms": TIMES[name]}), flush=True)


def attention_sweep():
    """SDPA forward and backward at the shapes of bench/gpu_ops.rs's attention sweep."""
    dev, bf = "cuda", torch.bfloat16
    for t in (2048, 4096):
        for d in (64, 128):
            b, nh = 16384 // t, 2048 // d
            q, k, v = (torch.randn(b, nh, t, d, device=dev, dtype=bf, requires_grad=True) for _ in range(3))
            g = torch.randn(b, nh, t, d, device=dev, dtype=bf)
            timed(f"attention T{t} D{d} fwd",
                  lambda: F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), is_causal=True))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            timed(f"attention T{t} D{d} bwd", lambda: torch.autograd.grad(o, (q, k, v), g, retain_graph=True))


def ratios(ours_path, theirs):
    """ours/SDPA per op name, from bench/gpu_ops.rs's timing lines in `ours_path` (its `check` lines are
    skipped); each line names the file."""
    ours = {}
    for line in open(ours_path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            if "op" in r:
                ours[r["op"]] = r["ms"]
    for name, ms in theirs.items():
        if name in ours:
            print(json.dumps({"ours": ours_path, "op": name, "ours_ms": ours[name], "sdpa_ms": ms,
                              "ours_over_sdpa": round(ours[name] / ms, 3)}), flush=True)


def main():
    if os.environ.get("ATTN_SWEEP") == "1":
        attention_sweep()
        for i, arg in enumerate(sys.argv):
            if arg == "--ours":
                ratios(sys.argv[i + 1], TIMES)
        return
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
