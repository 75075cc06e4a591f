#!/usr/bin/env python3
"""Memory over steps for any device (tests/memory_over_steps.rs is the CPU test that CI runs): trains each
pipeline for 2N steps with `wmtp run` and compares, at steps N and 2N, the host memory (`mem.host_rss_mib`,
lowest of the last 5 steps of each half) and on CUDA the GPU pool's high-water mark (`mem.peak_used_gib`).
Pass: host within max(5%, 6 MiB), GPU peak within max(5%, 0.05 GiB) of step N's.

Usage: python3 bench/memory_over_steps.py --wmtp target/release/wmtp [--plugins plugins] [--steps-half 10]
           [--device cuda] [--set KEY=VALUE ...] [--pipelines baseline critic verifiable rho1] [--lora]
Prints one line per run; exit status 1 when one grows.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

WINDOW = 5


def run(a, pipeline, lora, tmp):
    run_dir = os.path.join(tmp, f"{pipeline}-{'lora' if lora else 'full'}")
    sets = [f"training.steps={2 * a.steps_half}", f"checkpoint.dir={json.dumps(run_dir)}",
            "runtime.eval_every=0", "runtime.progress=false", "reference.baseline_steps=2",
            f"model.device={json.dumps(a.device)}", f"training.use_lora={'true' if lora else 'false'}"] + a.set
    cmd = [a.wmtp, "run", "--pipeline", os.path.join(a.plugins, f"{pipeline}.wasm")]
    if a.config:
        cmd += ["--config", a.config]
    for s in sets:
        cmd += ["--set", s]
    # fixed glibc malloc thresholds: freed memory goes back at once, so RSS follows what is live
    # (tests/memory_over_steps.rs says why)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [m for m in rows if "loss" in m and "step" in m]


def floor(rows, key, end):
    xs = [m[key] for m in rows if key in m and end - WINDOW < m["step"] <= end]
    return min(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wmtp", default="target/release/wmtp")
    ap.add_argument("--plugins", default="plugins")
    ap.add_argument("--config", default="")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps-half", type=int, default=10)
    ap.add_argument("--pipelines", nargs="+", default=["baseline", "critic", "verifiable", "rho1"])
    ap.add_argument("--lora", action="store_true", help="LoRA only (default: full fine-tuning and LoRA)")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    n, ok = a.steps_half, True
    with tempfile.TemporaryDirectory() as tmp:
        for p in a.pipelines:
            for lora in ([True] if a.lora else [False, True]):
                rows = run(a, p, lora, tmp)
                line = f"{p:<10} {'LoRA' if lora else 'full':<4}"
                for key, slack in (("mem.host_rss_mib", 6.0), ("mem.peak_used_gib", 0.05)):
                    mid, end = floor(rows, key, n), floor(rows, key, 2 * n)
                    if mid is None or end is None:
                        continue
                    good = end - mid <= max(0.05 * mid, slack)
                    ok &= good
                    line += f" | {key} {mid:.3f} at step {n} → {end:.3f} at {2 * n} ({'ok' if good else 'GROWS'})"
                print(line, flush=True)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
