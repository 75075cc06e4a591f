#!/usr/bin/env python3
"""The table of bench/speculative/run.sh: per heads run (lr), the heads' held-out CE on the distilled
answers (first and last validation), plain and self-speculative tokens/s, the ratio, tokens per
forward pass and each head's acceptance.

    python3 bench/speculative/report.py OUT
"""
import glob
import json
import os
import re
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


def main(out):
    print("| heads lr | val CE h0–h3 first | last | plain tok/s | speculative tok/s | ratio | tokens/pass | acceptance |")
    print("|---|---|---|---|---|---|---|---|")
    for d in sorted(glob.glob(os.path.join(out, "heads-lr*"))):
        lr = os.path.basename(d)[len("heads-lr"):]
        first, last = val_ce(d)
        plain = tokens_per_s(os.path.join(out, f"plain-lr{lr}.log"))
        spec_log = os.path.join(out, f"speculative-lr{lr}.log")
        spec = tokens_per_s(spec_log)
        text = open(spec_log).read() if os.path.exists(spec_log) else ""
        m = re.search(r"speculative: ([\d.]+) tokens per forward pass.*drafts accepted: (.*)", text)
        ratio = f"{spec / plain:.2f}×" if plain and spec else "–"
        print(f"| {lr} | {fmt(first)} | {fmt(last)} | {plain or '–'} | {spec or '–'} | {ratio} | "
              f"{m.group(1) if m else '–'} | {m.group(2).strip() if m else '–'} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/speculative")
