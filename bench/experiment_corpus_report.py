#!/usr/bin/env python3
"""The table of bench/experiment_corpus.sh: per arm × recipe, held-out CE per head on the corpus's held-out
split and on HumanEval's canonical solutions, greedy pass@1 on 164 problems, and where PASS10=1 ran, the
sampled pass@1 and pass@10 (unbiased estimator of Chen et al. 2021) of its 10 samples per problem (mean ± sample std over seeds),
then paired differences by seed (rho1 − baseline within a recipe; ntp-heads − uniform within an arm) with
their mean ± standard error. Standard library only.

Usage: python3 bench/experiment_corpus_report.py OUT   (writes OUT/report.md and prints it)
"""
import json
import math
import os
import statistics
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pass_at_k(n, c, k):
    """The unbiased pass@k of a problem with c of n samples passing (Chen et al. 2021): 1 − C(n−c, k)/C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_rate(path, k=1):
    """Mean pass@k over the problems of a `wmtp eval --humaneval --out` file (None if missing or n < k)."""
    try:
        with open(path) as f:
            rows = [json.loads(l) for l in f if l.strip()]
    except OSError:
        return None
    if not rows or any(r["n"] < k for r in rows):
        return None
    return statistics.fmean(pass_at_k(r["n"], r["passed"], k) for r in rows)


def scores(d):
    """The scores of one scored run directory (None where missing)."""
    c, h = load(os.path.join(d, "corpus_val_ce.json")), load(os.path.join(d, "humaneval_ce.json"))
    return {"corpus": c and c["ce_heads"], "humaneval": h and h["ce_heads"],
            "pass1": pass_rate(os.path.join(d, "pass1.jsonl")),
            "sampled1": pass_rate(os.path.join(d, "pass10.jsonl"), 1),
            "pass10": pass_rate(os.path.join(d, "pass10.jsonl"), 10)}


def mean_std(xs):
    """mean ± sample std of the values present; "(n=k)" when some runs lack the score."""
    have = [x for x in xs if x is not None]
    if not have:
        return "–"
    s = statistics.stdev(have) if len(have) > 1 else 0.0
    note = f" (n={len(have)})" if len(have) < len(xs) else ""
    return f"{statistics.fmean(have):.4f} ± {s:.4f}{note}"


def mean_se(xs):
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:+.4f} (n=1, no standard error)"
    se = statistics.stdev(xs) / math.sqrt(len(xs))
    return f"{statistics.fmean(xs):+.4f} ± {se:.4f} (n={len(xs)})"


def main():
    out = sys.argv[1]
    runs = {}  # (arm, recipe) -> {seed: scores}
    for arm in sorted(os.listdir(out)):
        if arm == "untrained" or not os.path.isdir(os.path.join(out, arm)):
            continue
        for recipe in sorted(os.listdir(os.path.join(out, arm))):
            base = os.path.join(out, arm, recipe)
            if not os.path.isdir(base):
                continue
            seeds = {s[5:]: scores(os.path.join(base, s)) for s in sorted(os.listdir(base)) if s.startswith("seed-")}
            seeds = {k: v for k, v in seeds.items() if v["corpus"] is not None}
            if seeds:
                runs[(arm, recipe)] = seeds
    heads = 4
    rep = ["| run | seeds | corpus CE h0 | h1 | h2 | h3 | HumanEval CE h0 | h1 | h2 | h3 | greedy pass@1 (164) "
           "| sampled pass@1 | pass@10 |",
           "|---|---|" + "---|" * 11]
    u = scores(os.path.join(out, "untrained"))
    if u["corpus"]:
        rep.append("| untrained | – | " + " | ".join(f"{x:.4f}" for x in u["corpus"][:heads]) + " | "
                   + " | ".join(f"{x:.4f}" for x in u["humaneval"][:heads]) + f" | {mean_std([u['pass1']])} | "
                   f"{mean_std([u['sampled1']])} | {mean_std([u['pass10']])} |")
    for (arm, recipe), seeds in runs.items():
        v = list(seeds.values())
        cols = [mean_std([r["corpus"][k] for r in v]) for k in range(heads)]
        cols += [mean_std([r["humaneval"][k] for r in v if r["humaneval"]]) for k in range(heads)]
        cols += [mean_std([r[m] for r in v]) for m in ("pass1", "sampled1", "pass10")]
        rep.append(f"| {arm} {recipe} | {len(v)} | " + " | ".join(cols) + " |")
    rep += ["", "Paired differences by seed (mean ± standard error; negative CE = better):", ""]
    pairs = []
    for recipe in sorted({r for _, r in runs}):
        pairs.append((f"rho1 − baseline ({recipe})", ("rho1", recipe), ("baseline", recipe)))
    for arm in sorted({a for a, _ in runs}):
        pairs.append((f"ntp-heads − uniform ({arm})", (arm, "ntp-heads"), (arm, "uniform")))
    for label, a, b in pairs:
        if a not in runs or b not in runs:
            continue
        common = sorted(set(runs[a]) & set(runs[b]))
        diff = lambda f: [f(runs[a][s]) - f(runs[b][s]) for s in common
                          if f(runs[a][s]) is not None and f(runs[b][s]) is not None]
        rep.append(f"- {label}: corpus CE h0 {mean_se(diff(lambda r: r['corpus'][0]))}; HumanEval CE h0 "
                   f"{mean_se(diff(lambda r: r['humaneval'][0] if r['humaneval'] else None))}; "
                   f"pass@1 {mean_se(diff(lambda r: r['pass1']))}; "
                   f"pass@10 {mean_se(diff(lambda r: r['pass10']))}")
    text = "\n".join(rep) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
