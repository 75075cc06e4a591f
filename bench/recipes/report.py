#!/usr/bin/env python3
"""Table of bench/recipes/run.sh: per recipe, held-out CE per head at the last step (mean ± sample std
over seeds), its curve for head 0, greedy pass@1 on all HumanEval problems, and the issue-24 bar:
head-0 CE ≤ untrained + 0.01, heads 1..H−1 below their copied-init CE, pass@1 ≥ untrained.

Usage: python3 bench/recipes/report.py OUT   (writes OUT/report.md and prints it)
"""
import json
import os
import statistics
import sys


def rows(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs, digits=4):
    m, s = mean_std(xs)
    if m is None:
        return "–"
    return f"{m:.{digits}f}" if len(xs) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def pass_rate(path):
    if not os.path.exists(path):
        return None
    r = rows(path)
    return statistics.fmean(x["passed"] / x["n"] for x in r) if r else None


def seed_runs(out, recipe):
    runs = []
    d = os.path.join(out, recipe)
    for s in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        p = os.path.join(d, s)
        m = os.path.join(p, "metrics.jsonl")
        if not os.path.exists(m):
            continue
        val = [r for r in rows(m) if "val_ce_h0" in r]
        if not val:
            continue
        heads = sorted(int(k[len("val_ce_h"):]) for k in val[0] if k.startswith("val_ce_h"))
        runs.append({
            "seed": s,
            "steps": [r["step"] for r in val],
            "curve": [[r[f"val_ce_h{k}"] for k in heads] for r in val],
            "pass1": pass_rate(os.path.join(p, "humaneval_all.jsonl")),
        })
    return runs


def main():
    out = sys.argv[1]
    recipes = [r for r in ["uniform", "ntp", "weighted", "heads-lora", "heads-full", "ntp-heads", "staged"]
               if os.path.isdir(os.path.join(out, r))]
    all_runs = {r: seed_runs(out, r) for r in recipes}
    full = max(len(run["curve"]) for runs in all_runs.values() for run in runs)
    for recipe, runs in all_runs.items():  # a run cut short (killed) has fewer validations: left out
        short = [run["seed"] for run in runs if len(run["curve"]) < full]
        if short:
            print(f"{recipe}: left out unfinished {', '.join(short)}", file=sys.stderr)
        all_runs[recipe] = [run for run in runs if len(run["curve"]) == full]
    first = next((rs[0] for rs in all_runs.values() if rs), None)
    if first is None:
        sys.exit("no runs with validation metrics under " + out)
    heads = len(first["curve"][0])
    untrained = [statistics.fmean(rs[0]["curve"][0][k] for rs in all_runs.values() for rs in [rs] if rs)
                 for k in range(heads)]
    untrained_pass = pass_rate(os.path.join(out, "untrained", "humaneval_all.jsonl"))
    rep = ["| recipe | seeds | " + " | ".join(f"CE head {k}" for k in range(heads))
           + " | head 0 by step | pass@1 (164) | head 0 ≤ untrained + 0.01 | heads 1+ < init | pass@1 ≥ untrained |",
           "|" + "---|" * (heads + 7)]
    up = "–" if untrained_pass is None else f"{untrained_pass:.4f}"
    rep.append("| untrained | – | " + " | ".join(f"{x:.4f}" for x in untrained) + f" | – | {up} | | | |")
    for recipe, runs in all_runs.items():
        if not runs:
            continue
        last = [r["curve"][-1] for r in runs]
        ce = [fmt([l[k] for l in last]) for k in range(heads)]
        curve = " → ".join(f"{statistics.fmean(r['curve'][i][0] for r in runs):.3f}"
                           for i in range(len(runs[0]["curve"])))
        passes = [r["pass1"] for r in runs if r["pass1"] is not None]
        h0 = statistics.fmean(l[0] for l in last)
        ok_h0 = h0 <= untrained[0] + 0.01
        ok_heads = all(statistics.fmean(l[k] for l in last) < untrained[k] - 1.0 for k in range(1, heads))
        ok_pass = "–" if not passes or untrained_pass is None else (
            "yes" if statistics.fmean(passes) >= untrained_pass else "no")
        rep.append(f"| {recipe} | {len(runs)} | " + " | ".join(ce) + f" | {curve} | "
                   f"{fmt(passes, 4) if passes else '–'} ({len(passes)} seed{'s' if len(passes) != 1 else ''}) | "
                   f"{'yes' if ok_h0 else 'no'} | {'yes' if ok_heads else 'no'} | {ok_pass} |")
    rep.append("")
    rep.append("pass@1: greedy, all problems; bench/recipes/run.sh scores the untrained model and the checkpoints "
               "in f32 (runs of 2026-12-06 scored the checkpoints in bf16: see bench/recipes/README.md).")
    rep.append(f"CE: nats per token on the held-out problems' correct solutions (val_ce_h{{k}}, steps "
               f"{first['steps']}); mean ± sample std over seeds; 'heads 1+ < init' needs every extra head "
               f"at least 1 nat below its copied-init CE.")
    text = "\n".join(rep)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
