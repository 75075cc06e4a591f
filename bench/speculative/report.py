#!/usr/bin/env python3
"""The table of bench/speculative/run.sh: per heads run (lr) and draft tree, the heads' held-out CE on
the distilled answers (first and last validation), plain and self-speculative tokens/s (medians over
the interleaved repetitions), the ratio of each speculative run to the plain run before it (median,
range), tokens per forward pass, each head's acceptance and how often a pass accepted a draft off the
top chain (first repetition).

    python3 bench/speculative/report.py OUT
"""
import glob
import json
import os
import re
import statistics
import sys


def tokens_per_s(log):
    m = re.search(r"\(([\d.]+) tokens/s", open(log).read()) if os.path.exists(log) else None
    return float(m.group(1)) if m else None


def val_ce(run_dir):
    """(first, last) validation lines' val_ce_h{k} of a run's metrics.jsonl."""
    rows = []
    for path in glob.glob(os.path.join(run_dir, "**", "metrics.jsonl"), recursive=True):
        for line in open(path):
            r = json.loads(line)
            if any(k.startswith("val_ce_h") for k in r):
                rows.append(r)
    if not rows:
        return None, None
    pick = lambda r: [r.get(f"val_ce_h{k}") for k in range(4)]
    return pick(rows[0]), pick(rows[-1])


def fmt(xs):
    return " / ".join("–" if x is None else f"{x:.2f}" for x in xs) if xs else "–"


def spec_line(log):
    """(tokens per pass, acceptance text, passes off the top chain) of a speculative run's log."""
    text = open(log).read() if os.path.exists(log) else ""
    m = re.search(r"speculative: ([\d.]+) tokens per forward pass.*drafts accepted: ([^;\n]*)"
                  r"(?:; (\d+) passes accepted a draft off the top chain)?", text)
    if not m:
        return None, None, None
    passes = re.search(r"over (\d+) passes", text)
    off = f"{int(m.group(3)) / int(passes.group(1)):.0%}" if m.group(3) and passes else "–"
    return m.group(1), m.group(2).strip(), off


def main(out):
    print("| heads lr | val CE h0–h3 first | last | tree | plain tok/s | speculative tok/s | ratio: median (range, n) "
          "| tokens/pass | acceptance | passes off the top chain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in sorted(glob.glob(os.path.join(out, "heads-lr*"))):
        lr = os.path.basename(d)[len("heads-lr"):]
        first, last = val_ce(d)
        reps = sorted(int(m.group(1)) for f in glob.glob(os.path.join(out, f"plain-lr{lr}-r*.log"))
                      if (m := re.search(r"-r(\d+)\.log$", f)))
        trees = sorted({re.sub(rf"^spec-(.*)-lr{re.escape(lr)}-r\d+\.log$", r"\1", os.path.basename(f))
                        for f in glob.glob(os.path.join(out, f"spec-*-lr{lr}-r*.log"))
                        if not os.path.basename(f).startswith("spec-f32-")})
        for tree in trees:
            plains, specs, ratios = [], [], []
            for r in reps:
                p = tokens_per_s(os.path.join(out, f"plain-lr{lr}-r{r}.log"))
                q = tokens_per_s(os.path.join(out, f"spec-{tree}-lr{lr}-r{r}.log"))
                if p and q:
                    plains.append(p)
                    specs.append(q)
                    ratios.append(q / p)
            tpp, acc, off = spec_line(os.path.join(out, f"spec-{tree}-lr{lr}-r1.log"))
            ratio = (f"**{statistics.median(ratios):.2f}×** ({min(ratios):.2f}–{max(ratios):.2f}, {len(ratios)})"
                     if ratios else "–")
            med = lambda xs: f"{statistics.median(xs):.1f}" if xs else "–"
            print(f"| {lr} | {fmt(first)} | {fmt(last)} | {tree} | {med(plains)} | {med(specs)} | {ratio} | "
                  f"{tpp or '–'} | {acc or '–'} | {off or '–'} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/speculative")
