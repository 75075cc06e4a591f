#!/usr/bin/env python3
"""Side-by-side GPU benchmark: wmtp and its PyTorch reference (bench/gpu/reference.py) on the same MTP
training step, row by row, in ONE process tree on one GPU; prints a table with the ratios ours/PyTorch.

Sides (default): wmtp, PyTorch eager and PyTorch with every block torch.compile'd; `wmtp-blocks`,
`wmtp-selective` and `wmtp-none` are wmtp with that `runtime.activation_checkpointing`, so the three modes
sit beside the references in one run; `wmtp-selective:S` is "selective" on the first S blocks only
(`runtime.selective_blocks = S`).
Rows (default): 1b_mtp LoRA b8×2048, 1b_mtp full fine-tuning b8×2048, 7b_1t_4 LoRA b1×2048 and b4×2048.
For each side: tokens/s (B·T positions per second of step time), the step split (forward / backward /
optimiser / plugin), peak GPU memory — sampled with nvidia-smi every 50 ms for BOTH sides (device memory
used above the idle level), plus PyTorch's own allocator peak —, MFU against 989 TFLOP/s (bench/gpu/flops.py
says what is counted) and the time from launch to the end of the first step.

    python3 bench/gpu/run.py --wmtp target/release/wmtp --plugin plugins/baseline.wasm
    python3 bench/gpu/run.py --rows 1b_mtp:8:lora --steps 4 --wmtp-set runtime.activation_checkpointing=none

Each row's JSON goes to --out/results.jsonl; the table is printed at the end (bench/gpu/report.py).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from flops import PRESETS, step_flops  # noqa: E402
import report  # noqa: E402


class MemorySampler:
    """Peak of nvidia-smi's `memory.used` (MiB) above its level at start, per GPU, sampled every `ms`;
    `peak_gib` is the largest GPU's."""

    def __init__(self, ms=50):
        self.ms = ms
        self.base = self._read()
        self.peak = list(self.base)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _read(self):
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True)
        try:
            return [int(x) for x in out.stdout.split()]
        except ValueError:
            return [0]

    def _loop(self):
        while not self._stop.is_set():
            now = self._read()
            if len(now) == len(self.peak):
                self.peak = [max(a, b) for a, b in zip(self.peak, now)]
            time.sleep(self.ms / 1e3)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def peak_gib(self):
        return max(p - b for p, b in zip(self.peak, self.base)) / 1024


def make_data(path, seq, rows, seed=0):
    """Plain-text rows of seq − 2 bytes: with the byte tokenizer, BOS + text + EOS = seq positions."""
    rng = random.Random(seed)
    words = ["the", "model", "token", "head", "loss", "train", "value", "step", "data", "grad", "layer"]
    with open(path, "w") as f:
        for i in range(rows):
            text = ""
            while len(text) < seq - 2:
                text += rng.choice(words) + " "
            f.write(json.dumps({"text": text[: seq - 2], "problem_id": f"bench/{i}"}) + "\n")


CHECKPOINTING_SIDES = {"wmtp-blocks": "blocks", "wmtp-selective": "selective", "wmtp-none": "none"}


def checkpointing_settings(side):
    """The `--set`s of a wmtp side: its activation checkpointing (wmtp-blocks|-selective|-none), and for
    `wmtp-selective:S` "selective" on S blocks; [] for plain `wmtp` (auto)."""
    mode, _, blocks = side.partition(":")
    if mode not in CHECKPOINTING_SIDES:
        return []
    sets = [f"runtime.activation_checkpointing={CHECKPOINTING_SIDES[mode]}"]
    if blocks:
        if mode != "wmtp-selective" or not blocks.isdigit():
            raise SystemExit(f"side {side}: only wmtp-selective:S takes a block count")
        sets.append(f"runtime.selective_blocks={blocks}")
    return sets


def is_wmtp_side(side):
    """wmtp, wmtp-fsdp and the checkpointing sides (wmtp-selective:S included)."""
    return side in ("wmtp", "wmtp-fsdp") or side.partition(":")[0] in CHECKPOINTING_SIDES


def wmtp_row(args, preset, batch, lora, data, workdir, fsdp=False, side=None):
    """wmtp's row; `fsdp`: launched as --nproc ranks (`wmtp launch --nproc-per-node N`), so the policy is
    sharded (FSDP over NCCL in an `nccl` build); with N = 1, what sharding costs against the plain run.
    `batch` is per rank: the global batch is N·batch. `side` wmtp-blocks|-selective|-none sets
    `runtime.activation_checkpointing` (wmtp-selective:S also `runtime.selective_blocks`)."""
    world = args.nproc if fsdp else 1
    side = side or ("wmtp-fsdp" if fsdp else "wmtp")
    run_dir = os.path.join(workdir, f"{side.replace(':', '-')}{world}-{preset}-b{batch}-{'lora' if lora else 'full'}")
    launch = [args.wmtp, "launch", "--nproc-per-node", str(world), "--master-port", "29517", "--"] \
        if fsdp else [args.wmtp]
    cmd = launch + ["run", "--pipeline", args.plugin, "--config", os.path.join(HERE, "wmtp_bench.toml"),
           "--set", f"model.path={preset}", "--set", f"training.batch_size={batch}",
           "--set", f"training.use_lora={'true' if lora else 'false'}", "--set", f"data.train={data}",
           "--set", f"data.max_length={args.seq}", "--set", f"training.steps={args.warmup + args.steps}",
           "--set", f"checkpoint.dir={run_dir}"]
    for s in checkpointing_settings(side):
        cmd += ["--set", s]
    for s in args.wmtp_set:
        cmd += ["--set", s]
    with MemorySampler() as mem:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"side": side, "preset": preset, "batch": batch, "lora": lora, "world": world,
                "error": (proc.stderr or proc.stdout)[-2000:]}
    lines = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl")) if '"step"' in x]
    lines = [x for x in lines if "time.step_s" in x]
    timed = lines[args.warmup:]
    mean = lambda k: sum(x[k] for x in timed) / len(timed)  # noqa: E731
    step = mean("time.step_s")
    return {
        "side": side, "preset": preset, "batch": batch, "seq": args.seq, "lora": lora, "world": world,
        "tokens_per_s": world * batch * args.seq / step, "step_s": step, "forward_s": mean("time.forward_s"),
        "backward_s": mean("time.backward_s"), "optimizer_s": mean("time.optimizer_s"),
        "plugin_s": mean("time.plugin_s"), "smi_peak_gib": mem.peak_gib(),
        "peak_allocated_gib": timed[-1].get("mem.peak_used_gib"),
        "peak_reserved_gib": timed[-1].get("mem.peak_reserved_gib"),
        "first_step_s": lines[0].get("time.first_step_done_s"),
        "tflops_per_step": step_flops(PRESETS[preset], batch, args.seq, lora) / 1e12,
        "loss": timed[-1]["loss"], "settings": checkpointing_settings(side) + args.wmtp_set,
    }


def torch_row(args, preset, batch, lora, fsdp=False, compile_blocks=False):
    """The PyTorch reference's row; `fsdp`: FSDP2 under torchrun with --nproc ranks (batch per rank);
    `compile_blocks`: every block torch.compile'd (side `pytorch-compile`)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
              "--master-port", "29518"] if fsdp else [sys.executable]
    cmd = launch + [os.path.join(HERE, "reference.py"), "--preset", preset, "--batch", str(batch),
                    "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if lora:
        cmd.append("--lora")
    if fsdp:
        cmd.append("--fsdp")
    if compile_blocks:
        cmd.append("--compile")
    with MemorySampler() as mem:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"side": ("pytorch-fsdp" if fsdp else "pytorch") + ("-compile" if compile_blocks else ""), "preset": preset, "batch": batch, "lora": lora,
                "error": (proc.stderr or proc.stdout)[-2000:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["smi_peak_gib"] = mem.peak_gib()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wmtp", default="target/release/wmtp")
    ap.add_argument("--plugin", default="plugins/baseline.wasm")
    ap.add_argument("--rows", nargs="*",
                    default=["1b_mtp:8:lora", "1b_mtp:8:full", "7b_1t_4:1:lora", "7b_1t_4:4:lora"],
                    help="preset:batch:lora|full")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--sides", default="wmtp,pytorch,pytorch-compile",
                    help="comma-separated: wmtp, wmtp-blocks, wmtp-selective, wmtp-none (wmtp with that "
                         "runtime.activation_checkpointing), wmtp-selective:S (selective on S blocks), wmtp-fsdp (launched as --nproc sharded ranks), pytorch, "
                         "pytorch-compile (every block torch.compile'd), pytorch-fsdp (FSDP2 under torchrun, "
                         "--nproc ranks)")
    ap.add_argument("--nproc", type=int, default=1, help="ranks (GPUs) of the -fsdp sides; batch is per rank")
    ap.add_argument("--wmtp-set", action="append", default=[], help="extra --set for wmtp (repeatable)")
    ap.add_argument("--out", default=None, help="folder for results.jsonl and the runs")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="wmtp-bench-")
    os.makedirs(out, exist_ok=True)
    data = os.path.join(out, "bench-data.jsonl")
    make_data(data, args.seq, 64)
    results = []
    for row in args.rows:
        preset, batch, mode = row.split(":")
        for side in args.sides.split(","):
            t0 = time.time()
            if is_wmtp_side(side):
                r = wmtp_row(args, preset, int(batch), mode == "lora", data, out, fsdp=side == "wmtp-fsdp",
                             side=side)
            else:
                r = torch_row(args, preset, int(batch), mode == "lora", fsdp=side == "pytorch-fsdp",
                              compile_blocks=side == "pytorch-compile")
            r["wall_s"] = time.time() - t0
            results.append(r)
            with open(os.path.join(out, "results.jsonl"), "a") as f:
                f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)
    print(report.table(results))


if __name__ == "__main__":
    main()
