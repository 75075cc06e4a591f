#!/usr/bin/env python3
"""Instruction rows for self-distillation, HumanEval-shaped but not HumanEval (issue 24 item 4).

From the code corpus of scripts/make-code-corpus.py (already 10-gram-deduplicated against HumanEval):
every top-level function row whose body opens with a docstring becomes one prompt — its `def` line(s)
and the docstring, under HumanEval's instruction ("Complete the following Python function.") — so the
heads learn the model's own answers to prompts of the kind self-speculative decoding is measured on,
without seeing a HumanEval prompt. Rows are taken evenly over the corpus, at most --limit of them.

    python3 bench/speculative/make_prompts.py CORPUS/train.jsonl OUT.jsonl [--limit 1536]
"""
import argparse
import ast
import json
import sys

INSTRUCTION = "Complete the following Python function."


def prompt_of(text):
    """The function's header and docstring (the text up to the docstring's end), or None."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    fn = tree.body[0]
    first = fn.body[0] if fn.body else None
    if not (isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
            and isinstance(first.value.value, str)) or len(fn.body) < 2:
        return None  # no docstring, or nothing after it to complete
    lines = text.splitlines(keepends=True)
    head = "".join(lines[: first.end_lineno])
    return head if head.endswith("\n") else head + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int, default=1536)
    a = ap.parse_args()
    prompts = []
    with open(a.corpus) as f:
        for i, line in enumerate(f):
            text = json.loads(line)["text"]
            if text.startswith("def ") and '"""' in text[:800]:
                p = prompt_of(text)
                if p:
                    prompts.append((i, p))
    step = max(1, len(prompts) // a.limit)
    chosen = prompts[::step][: a.limit]
    with open(a.out, "w") as f:
        for i, p in chosen:
            f.write(json.dumps({"instruction": INSTRUCTION, "input": p, "problem_id": f"corpus/{i}"}) + "\n")
    print(f"{len(chosen)} prompts of {len(prompts)} documented functions -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
