#!/usr/bin/env python3
"""PyTorch reference of wmtp's MTP training step, for side-by-side speed and memory (bench/gpu/run.sh).

The SAME model as wmtp (../../docs/design.md §1): Meta's MTP layout — `n_layers − H + 1` blocks in
`layers` (the trunk, then head 0), H − 1 extra head blocks, every head on the same trunk output, shared
final RMSNorm and output projection; pre-norm blocks, RMSNorm in f32, interleaved-pair RoPE in f32, causal
grouped-query attention (here through `F.scaled_dot_product_attention`), SwiGLU feed-forward. The step is
wmtp's baseline pipeline: mean over heads of the mean next-(k+1) CE, in f32.

Precision as wmtp's mixed precision: bf16 compute under `torch.autocast`; frozen base weights stored in
bf16; trainable parameters (LoRA A/B, or every weight for full fine-tuning) f32 masters; fused AdamW
(`torch.optim.AdamW(fused=True)`) with f32 state. No activation checkpointing (eager PyTorch).

Prints one JSON line per row: tokens/s (B·T positions per second), the step split (forward, backward,
optimiser) from CUDA events, peak memory (torch.cuda.max_memory_allocated/reserved), and the FLOP count
the MFU figure uses (bench/gpu/flops.py).

    python3 bench/gpu/reference.py --preset 1b_mtp --batch 8 --seq 2048 --lora --steps 6

`--fsdp` under torchrun: PyTorch FSDP2 (`fully_shard`) over NCCL — every `layers` block and extra head its
own unit, the root (embedding, final norm, output) one more; parameters gathered in bf16, gradients
reduced in f32 (`MixedPrecisionPolicy`), fused AdamW on the local shards. `--batch` is PER RANK (each rank
draws its own tokens); rank 0 prints the row, tokens/s counting all ranks, memory its own peak:

    torchrun --nproc-per-node 2 bench/gpu/reference.py --fsdp --preset 1b_mtp --batch 8 --lora

`--compile`: every block (trunk, head 0, extra heads) compiled with `torch.compile` (default mode,
inductor), as torchtune's `compile=True` does; the loss head stays eager. The warm-up steps absorb the
compilation; `first_step_s` includes it:

    python3 bench/gpu/reference.py --preset 1b_mtp --batch 8 --lora --compile

`--profile FILE` adds one untimed step under torch.profiler and writes its per-kernel CUDA times to FILE
(the same table as bench/gpu/ncu_summary.py makes of wmtp's kernels).
"""
import argparse
import json
import math
import sys
import time
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import PRESETS, hidden_dim, step_flops  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight.to(x.dtype)


class LoraLinear(nn.Module):
    """y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ; W frozen when LoRA is on."""

    def __init__(self, fin, fout, rank, alpha, lora):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fout, fin).normal_(0, 0.02))
        self.lora = lora
        if lora:
            self.weight.requires_grad_(False)
            self.a = nn.Parameter(torch.empty(rank, fin).uniform_(-1 / math.sqrt(fin), 1 / math.sqrt(fin)))
            self.b = nn.Parameter(torch.zeros(fout, rank))
            self.scale = alpha / rank

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.lora:
            y = y + F.linear(F.linear(x, self.a), self.b) * self.scale
        return y


def rope_tables(head_dim, theta, t, dev):
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=dev)[: head_dim // 2].float() / head_dim))
    ang = torch.outer(torch.arange(t, device=dev).float(), freqs)
    return torch.polar(torch.ones_like(ang), ang)  # [T, hd/2] complex64


def apply_rope(x, cis):
    # x [B, T, h, hd], pairs (2i, 2i+1) rotated (Meta's interleaved convention)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * cis[None, :, None, :]).flatten(3)
    return out.type_as(x)


class Block(nn.Module):
    def __init__(self, a, lora_targets, rank, alpha):
        super().__init__()
        d, nh, nkv = a["dim"], a["n_heads"], a.get("n_kv_heads") or a["n_heads"]
        hd, f = d // nh, hidden_dim(a)
        self.nh, self.nkv, self.hd = nh, nkv, hd

        def lin(name, fin, fout):
            return LoraLinear(fin, fout, rank, alpha, name in lora_targets)

        self.wq, self.wk, self.wv = lin("wq", d, nh * hd), lin("wk", d, nkv * hd), lin("wv", d, nkv * hd)
        self.wo = lin("wo", nh * hd, d)
        self.w1, self.w2, self.w3 = lin("w1", d, f), lin("w2", f, d), lin("w3", d, f)
        self.attention_norm = RMSNorm(d, a["norm_eps"])
        self.ffn_norm = RMSNorm(d, a["norm_eps"])

    def forward(self, x, cis):
        b, t, _ = x.shape
        h = self.attention_norm(x)
        q = apply_rope(self.wq(h).view(b, t, self.nh, self.hd), cis)
        k = apply_rope(self.wk(h).view(b, t, self.nkv, self.hd), cis)
        v = self.wv(h).view(b, t, self.nkv, self.hd)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            enable_gqa=self.nkv != self.nh)
        x = x + self.wo(o.transpose(1, 2).reshape(b, t, -1))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class MTP(nn.Module):
    def __init__(self, a, lora, rank=8, alpha=16.0, targets=("wq", "wk", "wv", "wo")):
        super().__init__()
        self.a = a
        H = a["n_future_tokens"]
        tg = set(targets) if lora else set()
        self.tok_embeddings = nn.Embedding(a["vocab_size"], a["dim"])
        self.layers = nn.ModuleList(Block(a, tg, rank, alpha) for _ in range(a["n_layers"] - H + 1))
        self.extra_heads = nn.ModuleList(Block(a, tg, rank, alpha) for _ in range(H - 1))
        self.norm = RMSNorm(a["dim"], a["norm_eps"])
        self.output = nn.Linear(a["dim"], a["vocab_size"], bias=False)
        if lora:
            for n, p in self.named_parameters():
                if not (n.endswith(".a") or n.endswith(".b")):
                    p.requires_grad_(False)

    def forward(self, tokens, cis):
        """Baseline MTP loss: mean over heads k of mean_t CE(logits_k[t], x[t+k+1]) (f32)."""
        h = self.tok_embeddings(tokens)
        for blk in self.layers[:-1]:
            h = blk(h, cis)
        heads = [self.layers[-1], *self.extra_heads]
        t = tokens.shape[1]
        total = 0.0
        for k, head in enumerate(heads):
            z = self.norm(head(h, cis))[:, : t - k - 1]
            logits = self.output(z).float()
            total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                            tokens[:, k + 1:].reshape(-1))
        return total / len(heads)


def shard_fsdp(model):
    """FSDP2 units: each block, then the root (embedding, norm, output); bf16 gathers, f32 reductions."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for blk in [*model.layers, *model.extra_heads]:
        fully_shard(blk, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def kernel_table(prof, top=30):
    """Per-kernel CUDA time of a torch.profiler run, grouped like bench/gpu/ncu_summary.py (template
    arguments cut), largest first, as a Markdown table."""
    import re
    from collections import defaultdict
    total, count = defaultdict(float), defaultdict(int)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = re.sub(r"<.*", "", e.name).strip()
            total[name] += e.device_time / 1e3
            count[name] += 1
    all_ms = sum(total.values())
    lines = [f"{sum(count.values())} launches, {all_ms:.1f} ms of kernel time",
             "| kernel | ms | launches | share |", "|---|---|---|---|"]
    for name, ms in sorted(total.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"| {name[:60]} | {ms:.1f} | {count[name]} | {100 * ms / all_ms:.1f}% |")
    return "\n".join(lines)


def run_row(preset, batch, seq, lora, steps, warmup, fsdp=False, profile=None, compile_blocks=False):
    a = dict(PRESETS[preset])
    world = dist.get_world_size() if fsdp else 1
    dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.reset_peak_memory_stats()
    t_start = time.time()
    # under FSDP built on the meta device and materialised shard by shard: no rank holds the whole model
    with torch.device("meta" if fsdp else dev):
        model = MTP(a, lora)
    if lora:
        for n, p in model.named_parameters():  # frozen base in bf16, trainable masters in f32
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    if fsdp:
        shard_fsdp(model)
        model.to_empty(device=dev)
        torch.manual_seed(dist.get_rank())
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(".b"):
                    p.zero_()
                elif n.endswith(".a"):
                    p.uniform_(-0.02, 0.02)
                elif "norm" in n:
                    p.fill_(1.0)
                else:
                    p.normal_(0, 0.02)
    if compile_blocks:
        for blk in [*model.layers, *model.extra_heads]:
            blk.compile()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01, fused=True)
    cis = rope_tables(a["dim"] // a["n_heads"], a["rope_theta"], seq, dev)
    g = torch.Generator(device=dev).manual_seed(dist.get_rank() if fsdp else 0)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    times, first_step_at = [], None
    for s in range(warmup + steps + (1 if profile else 0)):
        prof = None
        if s == warmup + steps:  # one more, untimed step, kernel by kernel
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            prof.__enter__()
        tokens = torch.randint(0, a["vocab_size"], (batch, seq), device=dev, generator=g)
        ev[0].record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(tokens, cis)
        ev[1].record()
        loss.backward()
        ev[2].record()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ev[3].record()
        torch.cuda.synchronize()
        if prof is not None:
            prof.__exit__(None, None, None)
            with open(profile, "w") as f:
                f.write(kernel_table(prof) + "\n")
        if first_step_at is None:
            first_step_at = time.time() - t_start
        if warmup <= s < warmup + steps:
            times.append([ev[i].elapsed_time(ev[i + 1]) / 1e3 for i in range(3)])
    fwd, bwd, opt_s = (sum(x[i] for x in times) / len(times) for i in range(3))
    step = fwd + bwd + opt_s
    ntrain = sum(p.numel() for p in params)  # a DTensor counts its global size
    flops = step_flops(a, batch, seq, lora)
    return {
        "side": ("pytorch-fsdp" if fsdp else "pytorch") + ("-compile" if compile_blocks else ""), "preset": preset, "batch": batch, "seq": seq,
        "lora": lora, "world": world, "tokens_per_s": world * batch * seq / step, "step_s": step, "forward_s": fwd, "backward_s": bwd,
        "optimizer_s": opt_s, "plugin_s": 0.0,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "tflops_per_step": flops / 1e12, "trainable": ntrain, "first_step_s": first_step_at,
        "loss": float(loss),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1b_mtp", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--fsdp", action="store_true", help="FSDP2 over NCCL (start it with torchrun)")
    ap.add_argument("--profile", metavar="FILE",
                    help="write the first timed step's per-kernel CUDA times (torch.profiler) to FILE")
    ap.add_argument("--compile", action="store_true", help="torch.compile every block (as torchtune's compile=True)")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.fsdp:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    row = run_row(args.preset, args.batch, args.seq, args.lora, args.steps, args.warmup, args.fsdp,
                  args.profile, args.compile)
    if not args.fsdp or dist.get_rank() == 0:
        print(json.dumps(row), flush=True)
    if args.fsdp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
