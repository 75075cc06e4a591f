#!/usr/bin/env python3
"""The GPU benchmark's table from results.jsonl rows (bench/gpu/run.py writes them); several files (runs
at different --nproc) are read as one table, with the scaling and FSDP-vs-FSDP ratios:

    python3 bench/gpu/report.py results.jsonl [more.jsonl …]
"""
import json
import sys

from flops import H200_BF16_PEAK


def _label(r):
    """`side`, with ×N for a run over N ranks (the -fsdp sides)."""
    return f"{r['side']}×{r.get('world', 1)}" if r["side"].endswith("fsdp") else r["side"]


def _fmt(r):
    if "error" in r:
        return f"| {_label(r)} | error: {r['error'].strip().splitlines()[-1][:80]} |" + " |" * 8
    mfu = r["tflops_per_step"] * 1e12 / r["step_s"] / H200_BF16_PEAK
    peak = r.get("smi_peak_gib", float("nan"))
    alloc = r.get("peak_allocated_gib")
    first = r.get("first_step_s")
    return (f"| {_label(r)} | {r['tokens_per_s']:,.0f} | {r['step_s']*1e3:,.0f} | {r['forward_s']*1e3:,.0f} | "
            f"{r['backward_s']*1e3:,.0f} | {r['optimizer_s']*1e3:,.1f} | {r['plugin_s']*1e3:,.1f} | "
            f"{peak:.1f}{'' if alloc is None else f' ({alloc:.1f})'} | {100*mfu:.1f}% | "
            f"{'' if first is None else f'{first:.1f}'} |")


def table(rows):
    out = []
    keys = []
    for r in rows:
        k = (r["preset"], r["batch"], r["lora"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        group = [r for r in rows if (r["preset"], r["batch"], r["lora"]) == k]
        out.append(f"\n{k[0]} {'LoRA' if k[2] else 'full FT'} b{k[1]}×{group[0].get('seq', '?')}")
        out.append("| side | tokens/s | step ms | fwd ms | bwd ms | optim ms | plugin ms | "
                   "peak GiB nvidia-smi (torch alloc) | MFU | first step done s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        out += [_fmt(r) for r in group]
        by = {r["side"]: r for r in group if "error" not in r and r.get("world", 1) == 1}
        ours = [s for s in ("wmtp", "wmtp-blocks", "wmtp-selective", "wmtp-none") if s in by]
        ours += [s for s in by if s.startswith("wmtp-selective:")]
        for side in ours:
            w = by[side]
            name = "ours" if side == "wmtp" else side
            if "pytorch" in by:
                p = by["pytorch"]
                out.append(f"{name}/PyTorch: tokens/s {w['tokens_per_s']/p['tokens_per_s']:.3f}×, "
                           f"peak memory {w['smi_peak_gib']/max(p['smi_peak_gib'], 1e-9):.2f}× (nvidia-smi); "
                           f"plugin {100*w['plugin_s']/w['step_s']:.2f}% of our step")
            if "pytorch-compile" in by:
                c = by["pytorch-compile"]
                out.append(f"{name}/torch.compile: tokens/s {w['tokens_per_s']/c['tokens_per_s']:.3f}×, "
                           f"peak memory {w['smi_peak_gib']/max(c['smi_peak_gib'], 1e-9):.2f}× (nvidia-smi)")
        if "wmtp" in by and "wmtp-fsdp" in by:
            w, f = by["wmtp"], by["wmtp-fsdp"]
            out.append(f"FSDP on one rank / plain: tokens/s {f['tokens_per_s']/w['tokens_per_s']:.3f}× "
                       f"(overhead {100*(1 - f['tokens_per_s']/w['tokens_per_s']):.1f}%), "
                       f"peak memory {f['smi_peak_gib']/max(w['smi_peak_gib'], 1e-9):.2f}×")
        out += _scaling(group)
    return "\n".join(out)


def _scaling(group):
    """Per N > 1: tokens/s against one GPU (wmtp: the plain run; PyTorch: its one-GPU run), as a fraction
    of N×, peak memory per GPU against one GPU, and wmtp/PyTorch at N."""
    ok = [r for r in group if "error" not in r]
    one = {"wmtp": next((r for r in ok if r["side"] == "wmtp"), None),
           "pytorch": next((r for r in ok if r["side"] == "pytorch"), None)}
    out = []
    for n in sorted({r.get("world", 1) for r in ok if r["side"].endswith("fsdp")} - {1}):
        at = {r["side"]: r for r in ok if r["side"].endswith("fsdp") and r.get("world", 1) == n}
        for side, base in (("wmtp-fsdp", one["wmtp"]), ("pytorch-fsdp", one["pytorch"])):
            r = at.get(side)
            if r and base:
                x = r["tokens_per_s"] / base["tokens_per_s"]
                out.append(f"{side} on {n} GPUs / 1 GPU: tokens/s {x:.2f}× ({100 * x / n:.0f}% of {n}×), "
                           f"peak memory per GPU {r['smi_peak_gib'] / max(base['smi_peak_gib'], 1e-9):.2f}×")
        if "wmtp-fsdp" in at and "pytorch-fsdp" in at:
            w, p = at["wmtp-fsdp"], at["pytorch-fsdp"]
            out.append(f"ours/PyTorch FSDP on {n} GPUs: tokens/s {w['tokens_per_s'] / p['tokens_per_s']:.3f}×, "
                       f"peak memory {w['smi_peak_gib'] / max(p['smi_peak_gib'], 1e-9):.2f}× (nvidia-smi)")
    return out


if __name__ == "__main__":
    print(table([json.loads(x) for f in sys.argv[1:] for x in open(f) if x.strip()]))
