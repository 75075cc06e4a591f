#!/usr/bin/env python3
"""A merged model is a complete Hugging Face model folder (issue 25 item 2), checked with transformers.

From a real model (SmolLM2-135M-Instruct, the Q4_1 GGUF of scripts/fixtures.sh): `wmtp run` makes a
one-step LoRA checkpoint at lr 1e-30 (the adapter moves by ~1e-30, so the merged weights are the base's),
`wmtp merge --format hf` writes a folder, and then, against transformers reading the GGUF itself
(`gguf_file=`, dequantised by the gguf package):
  1. AutoTokenizer on the folder gives the same ids for plain text, code and special tokens, and the same
     chat-template rendering (apply_chat_template, tokenized);
  2. AutoModelForCausalLM on the folder gives the same logits (f32, max |Δ| ≤ 1e-3);
  3. `wmtp generate --model FOLDER` (greedy) continues a prompt as transformers' greedy generate does.

Usage: .cache/pyref/bin/python tests/interop/merged_model.py --wmtp target/debug/wmtp \
         [--plugin plugins/baseline.wasm] [--gguf .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf]
Exit status 1 when a check fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The capital of France is Paris. Ünïcödé — and 1,234.5 numbers!",
    "<|im_start|>user\nHi<|im_end|>\n",
]
PROMPT = "def fibonacci(n):"


def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wmtp", required=True)
    ap.add_argument("--plugin", default="plugins/baseline.wasm")
    ap.add_argument("--gguf", default=".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    a = ap.parse_args()
    import torch
    import transformers

    fails = []
    gguf = os.path.abspath(a.gguf)
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data.jsonl")
        with open(data, "w") as f:
            for t in TEXTS * 4:
                f.write(json.dumps({"text": t}) + "\n")
        run_dir = os.path.join(d, "run")
        sh(a.wmtp, "run", "--pipeline", a.plugin, "--config", "configs/baseline_lora.toml",
           "--set", f'model.path="{gguf}"', "--set", 'model.device="cpu"', "--set", 'model.dtype="f32"',
           "--set", f'data.train="{data}"', "--set", "data.val_fraction=0.0", "--set", "data.max_length=64",
           "--set", "training.steps=1", "--set", "training.lr=1e-30", "--set", "training.batch_size=1",
           "--set", "training.grad_accum=1", "--set", "runtime.eval_every=0", "--set", "runtime.progress=false",
           "--set", f'checkpoint.dir="{run_dir}"')
        cks = os.path.join(run_dir, "checkpoints")
        ck = sorted(os.path.join(cks, c) for c in os.listdir(cks) if c.startswith("step-"))[-1]
        merged = os.path.join(d, "merged")
        sh(a.wmtp, "merge", "--format", "hf", "--checkpoint", ck, "--out", merged)

        # 1. tokenizer
        ref_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
        tok = transformers.AutoTokenizer.from_pretrained(merged)
        for t in TEXTS:
            a_ids, b_ids = tok(t)["input_ids"], ref_tok(t)["input_ids"]
            if a_ids != b_ids:
                fails.append(f"tokens of {t!r}: {a_ids[:12]}… vs GGUF's {b_ids[:12]}…")
        msgs = [{"role": "user", "content": "Write a function that adds two numbers."}]
        chat = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        ref_chat = ref_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        if list(chat["input_ids"] if hasattr(chat, "keys") else chat) != list(
                ref_chat["input_ids"] if hasattr(ref_chat, "keys") else ref_chat):
            fails.append("chat template rendering")
        print(f"tokenizer: {len(TEXTS)} texts and the chat template as the GGUF's "
              f"({'ok' if not fails else 'DIFFERENT'})")

        # 2. logits
        ref = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                                dtype=torch.float32).eval()
        mm = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        ids = torch.tensor([ref_tok(TEXTS[0] + TEXTS[1])["input_ids"]])
        with torch.no_grad():
            d_logit = (mm(ids).logits - ref(ids).logits).abs().max().item()
        print(f"logits: merged folder vs transformers on the GGUF: max |Δ| {d_logit:.2e}")
        if d_logit > 1e-3:
            fails.append(f"logits differ by {d_logit:.2e}")

        # 3. wmtp generate on the folder = transformers' greedy generate
        out = sh(a.wmtp, "generate", "--model", merged, "--prompt", PROMPT, "--max-new-tokens", "24")
        p_ids = tok(PROMPT, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            g = mm.generate(p_ids, max_new_tokens=24, do_sample=False)
        theirs = PROMPT + tok.decode(g[0, p_ids.shape[1]:], skip_special_tokens=True)
        ours = out.rstrip("\n")
        print(f"generate: wmtp {ours!r}\n          transformers {theirs!r}")
        if not (ours.startswith(theirs) or theirs.startswith(ours)):
            fails.append("greedy continuation")
        print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}")
    if fails:
        sys.exit("FAILED: " + "; ".join(fails))
    print("ok")


if __name__ == "__main__":
    main()
