#!/usr/bin/env python3
"""Writes data/arith.jsonl, wmtp's bundled default corpus (written by this script; CC0).

Small arithmetic word problems in the instruction/output format of docs/design.md §7: for every problem one correct
answer (is_correct = true) and two incorrect ones (off by one, or a wrong operation), so the pointwise
pipelines (baseline, rho1) train on the correct samples and critic/verifiable get (correct, incorrect)
pairs. Deterministic (seeded).
"""
import json
import random
import sys

rng = random.Random(20261129)
names = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
things = ["apples", "books", "coins", "shells", "stamps", "marbles", "cards", "pens"]
rows = []
for pid in range(160):
    a, b = rng.randint(2, 40), rng.randint(2, 30)
    who, what = rng.choice(names), rng.choice(things)
    if pid % 2 == 0:
        q = f"{who} has {a} {what} and finds {b} more. How many {what} does {who} have now?"
        right, wrong_op = a + b, abs(a - b)
        work = f"{a} + {b} = {a + b}"
        bad_work = f"{a} - {b} = {abs(a - b)}" if a >= b else f"{b} - {a} = {abs(a - b)}"
    else:
        a, b = max(a, b) + 5, min(a, b)
        q = f"{who} has {a} {what} and gives away {b}. How many {what} are left?"
        right, wrong_op = a - b, a + b
        work = f"{a} - {b} = {a - b}"
        bad_work = f"{a} + {b} = {a + b}"
    good = f"{work}. {who} has {right} {what}."
    off = f"{work[:work.rindex('=')]}= {right + 1}. {who} has {right + 1} {what}."
    op = f"{bad_work}. {who} has {wrong_op} {what}."
    task = f"arith/{pid}"
    rows.append({"instruction": q, "input": "", "output": good, "task_id": task, "problem_id": task, "is_correct": True})
    rows.append({"instruction": q, "input": "", "output": off, "task_id": task, "problem_id": task, "is_correct": False})
    rows.append({"instruction": q, "input": "", "output": op, "task_id": task, "problem_id": task, "is_correct": False})
out = sys.argv[1] if len(sys.argv) > 1 else "data/arith.jsonl"
with open(out, "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print(f"wrote {len(rows)} rows to {out}")
