#!/usr/bin/env python3
"""The table and the plot of bench/experiment.sh's runs: held-out CE per head and pass@1, mean ± std over
seeds, for each arm; each arm's difference from baseline paired by seed; the untrained model; the critic's
held-out pairwise accuracy; self-speculative decoding. Standard library only.

Usage: bench/experiment_report.py OUT   (OUT: the experiment's directory; writes OUT/report.md and
OUT/heldout.svg and prints the report)
"""
import json
import math
import os
import re
import statistics
import sys

ARMS = ["baseline", "rho1", "verifiable-frozen", "verifiable-joint"]
COLORS = {"untrained": "#999999", "baseline": "#1f77b4", "rho1": "#ff7f0e",
          "verifiable-frozen": "#2ca02c", "verifiable-joint": "#d62728"}


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def mean_std(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs, digits=4):
    m, s = mean_std(xs)
    return "–" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def seeds_of(out, arm):
    d = os.path.join(out, arm)
    if not os.path.isdir(d):
        return {}
    runs = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if not name.startswith("seed-"):
            continue
        r = {"seed": name[5:]}
        try:
            ce = json.load(open(os.path.join(p, "heldout_ce.json")))
            r["ce_heads"] = ce["ce_heads"]
            he = read_jsonl(os.path.join(p, "heldout_humaneval.jsonl"))
            r["pass1"] = statistics.fmean(x["passed"] / x["n"] for x in he)
            r["problems"] = [x["task_id"] for x in he]
        except (OSError, KeyError, ValueError):
            pass
        mpath = os.path.join(p, "metrics.jsonl")
        if os.path.exists(mpath):
            m = read_jsonl(mpath)
            steps = [x for x in m if "loss" in x]
            r["tokens"] = sum(x.get("tokens", 0) for x in steps)
            r["steps"] = len(steps)
            r["step0"] = next((x for x in m if x.get("step") == 0 and "val_ce" in x), None)
            vals = [x for x in m if "val_plugin.pairwise_accuracy" in x]
            if vals:
                r["pairwise_acc"] = (vals[0]["val_plugin.pairwise_accuracy"], vals[-1]["val_plugin.pairwise_accuracy"])
        try:
            r["seconds"] = float(open(os.path.join(p, "train_seconds")).read())
        except (OSError, ValueError):
            pass
        runs[r["seed"]] = r
    return runs


def paired(arm_runs, base_runs, key):
    diffs = [key(arm_runs[s]) - key(base_runs[s]) for s in arm_runs
             if s in base_runs and key(arm_runs[s]) is not None and key(base_runs[s]) is not None]
    return diffs


def verdict(diffs, lower_is_better):
    if len(diffs) < 2:
        return "too few seeds to say"
    m, s = statistics.fmean(diffs), statistics.stdev(diffs)
    se = s / math.sqrt(len(diffs))
    better = m < 0 if lower_is_better else m > 0
    if se == 0.0 and m == 0.0:
        return "no difference"
    if abs(m) > 2 * se:
        return ("better" if better else "worse") + f" than baseline (|mean| > 2·s.e. = {2 * se:.4f})"
    return f"no clear difference (|mean| ≤ 2·s.e. = {2 * se:.4f})"


def speculative_lines(out):
    d = os.path.join(out, "speculative")
    lines = []
    for label in ["trained-heads", "copied-heads"]:
        res = {}
        for mode in ["plain", "speculative"]:
            try:
                text = open(os.path.join(d, f"{label}-{mode}.log")).read()
            except OSError:
                continue
            m = re.search(r"([\d.]+) tokens/s", text)
            res[mode] = float(m.group(1)) if m else None
            s = re.search(r"speculative: ([\d.]+) tokens per forward pass.*drafts accepted: (.*)", text)
            if s:
                res["per_pass"], res["accept"] = s.group(1), s.group(2).strip()
        if res.get("plain") and res.get("speculative"):
            lines.append(f"| {label} | {res['plain']:.1f} | {res['speculative']:.1f} | "
                         f"{res['speculative'] / res['plain']:.2f}× | {res.get('per_pass', '–')} | {res.get('accept', '–')} |")
    return lines


def bar_svg(groups, series, values, title, ylabel, path):
    """Grouped bars: values[series][group] = (mean, std) or None."""
    W, H, L, B, T = 760, 340, 60, 60, 40
    allv = [v[0] + (v[1] or 0) for ser in values.values() for v in ser.values() if v and v[0] is not None]
    top = max(allv) * 1.1 if allv else 1.0
    gw = (W - L - 20) / len(groups)
    bw = gw * 0.8 / max(1, len(series))
    y = lambda v: T + (H - T - B) * (1 - v / top)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<text x="14" y="{(H - B + T) / 2}" transform="rotate(-90 14 {(H - B + T) / 2})" text-anchor="middle">{ylabel}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - 20}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>']
    for i in range(6):
        v = top * i / 5
        out.append(f'<text x="{L - 5}" y="{y(v) + 4}" text-anchor="end">{v:.3g}</text>')
        out.append(f'<line x1="{L}" y1="{y(v)}" x2="{W - 20}" y2="{y(v)}" stroke="#eee"/>')
    for gi, g in enumerate(groups):
        x0 = L + gi * gw + gw * 0.1
        out.append(f'<text x="{L + gi * gw + gw / 2}" y="{H - B + 16}" text-anchor="middle">{g}</text>')
        for si, s in enumerate(series):
            v = values.get(s, {}).get(g)
            if not v or v[0] is None:
                continue
            m, sd = v
            x = x0 + si * bw
            out.append(f'<rect x="{x:.1f}" y="{y(m):.1f}" width="{bw * 0.9:.1f}" height="{y(0) - y(m):.1f}" fill="{COLORS.get(s, "#444")}"/>')
            if sd:
                cx = x + bw * 0.45
                out.append(f'<line x1="{cx:.1f}" y1="{y(m + sd):.1f}" x2="{cx:.1f}" y2="{y(max(0, m - sd)):.1f}" stroke="black"/>')
    for si, s in enumerate(series):
        lx = L + 10 + si * 150
        out.append(f'<rect x="{lx}" y="{H - 22}" width="12" height="12" fill="{COLORS.get(s, "#444")}"/>')
        out.append(f'<text x="{lx + 16}" y="{H - 12}">{s}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    runs = {arm: seeds_of(out, arm) for arm in ARMS}
    base = runs["baseline"]
    if not base:
        sys.exit(f"{out}: no baseline runs")
    heads = max(len(r.get("ce_heads", [])) for r in base.values())
    rep = ["# Does weighting help? Held-out results", ""]
    any_seed = next(iter(base.values()))
    rep.append(f"{len(base)} seeds; {any_seed.get('steps', '?')} steps per run; held-out problems: "
               f"{len(any_seed.get('problems', []))} (pass@1 greedy, ChatML prompt). CE: nats per token on the "
               "held-out problems' correct solutions, every checkpoint scored by the baseline plugin. "
               "Mean ± sample std over seeds.")
    rep.append("")
    rep.append("| arm | CE head 0 | " + " | ".join(f"CE head {k}" for k in range(1, heads)) +
               " | pass@1 | tokens trained/run | train s/run |")
    rep.append("|---" * (heads + 4) + "|")
    untrained = [r["step0"] for r in base.values() if r.get("step0")]
    if untrained:
        u = untrained[0]
        ce_u = [u.get(f"val_ce_h{k}") for k in range(heads)]
        rep.append("| untrained | " + " | ".join(f"{c:.4f}" if c is not None else "–" for c in ce_u) + " | " +
                   "{} | 0 | 0 |")
    table_vals = {}
    for arm in ARMS:
        rs = [r for r in runs[arm].values() if "ce_heads" in r]
        if not rs:
            if runs[arm]:
                rep.append(f"| {arm} | (no finished run) |")
            continue
        ce = [fmt([r["ce_heads"][k] for r in rs if "ce_heads" in r]) for k in range(heads)]
        table_vals[arm] = {f"head {k}": mean_std([r["ce_heads"][k] for r in rs if "ce_heads" in r]) for k in range(heads)}
        rep.append(f"| {arm} | " + " | ".join(ce) + f" | {fmt([r.get('pass1') for r in rs], 3)} | "
                   f"{fmt([r.get('tokens') for r in rs], 0)} | {fmt([r.get('seconds') for r in rs], 0)} |")
    # untrained pass@1 on the held-out problems, and on all problems
    he_u = os.path.join(out, "untrained", "humaneval_greedy.jsonl")
    untrained_pass = "–"
    if os.path.exists(he_u):
        rows = read_jsonl(he_u)
        held = set(any_seed.get("problems", []))
        h = [x["passed"] / x["n"] for x in rows if x["task_id"] in held]
        untrained_pass = f"{statistics.fmean(h):.3f}" if h else "–"
        rep = [l.replace("{}", untrained_pass) if l.startswith("| untrained") else l for l in rep]
        rep.append("")
        line = (f"Untrained SmolLM2-135M-Instruct, all {len(rows)} problems: greedy pass@1 "
                f"{statistics.fmean(x['passed'] / x['n'] for x in rows):.4f}")
        txt = os.path.join(out, "untrained", "humaneval_sampled.txt")
        if os.path.exists(txt) and os.path.getsize(txt) > 0:
            line += "; sampled (T = 0.8, top-p 0.95): " + "; ".join(l.strip() for l in open(txt) if l.strip())
        rep.append(line + ".")
    rep = [l.replace("{}", "–") if l.startswith("| untrained") else l for l in rep]
    rep.append("")
    rep.append("## Each arm against baseline, paired by seed (arm − baseline; mean ± std)")
    rep.append("")
    rep.append("| arm | Δ CE head 0 | verdict (CE: lower is better) | Δ pass@1 | verdict |")
    rep.append("|---|---|---|---|---|")
    for arm in ARMS[1:]:
        if not runs[arm]:
            continue
        d_ce = paired(runs[arm], base, lambda r: r["ce_heads"][0] if "ce_heads" in r else None)
        d_p = paired(runs[arm], base, lambda r: r.get("pass1"))
        rep.append(f"| {arm} | {fmt(d_ce)} | {verdict(d_ce, True)} | {fmt(d_p, 3)} | {verdict(d_p, False)} |")
    critic = seeds_of(out, "critic")
    accs = [r["pairwise_acc"] for r in critic.values() if "pairwise_acc" in r]
    if accs:
        rep.append("")
        rep.append(f"Critic (verifiable-frozen's value model) held-out pairwise accuracy: "
                   f"{fmt([a[0] for a in accs], 3)} at step 0 → {fmt([a[1] for a in accs], 3)} at the end.")
    spec = speculative_lines(out)
    if spec:
        rep += ["", "## Self-speculative decoding (greedy, batch 1, 8 HumanEval prompts, 256 new tokens)", "",
                "| heads | plain tok/s | speculative tok/s | speed-up | tokens per pass | drafts accepted |",
                "|---|---|---|---|---|---|"] + spec
    if untrained:
        table_vals["untrained"] = {f"head {k}": (u[f"val_ce_h{k}"], 0.0) for k in range(heads) if f"val_ce_h{k}" in u}
    series = ["untrained"] + [a for a in ARMS if a in table_vals]
    bar_svg([f"head {k}" for k in range(heads)], series, table_vals,
            "Held-out cross-entropy per head (mean ± std over seeds)", "nats/token", os.path.join(out, "heldout.svg"))
    rep += ["", "Plot: heldout.svg (bars: mean over seeds; whiskers: ± std)."]
    text = "\n".join(rep) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
