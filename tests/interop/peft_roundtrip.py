#!/usr/bin/env python3
"""Round trip with the real Hugging Face libraries (issue 13, item 2): torch, transformers, peft and
tokenizers are the references; wmtp is checked against them.

1. A tiny LlamaForCausalLM (random, f32) and a byte-level BPE tokenizer trained here are saved.
2. wmtp → PEFT: `wmtp run` trains 3 LoRA steps on it (all-linear, 2 heads), `wmtp export --format peft`
   writes the adapter, `peft.PeftModel.from_pretrained` loads it on the HF model; head 0's mean CE on a
   text must equal `wmtp perplexity --model CHECKPOINT`'s, and `wmtp merge --format hf` loaded by
   `transformers` must give PEFT's logits (1e-4).
3. PEFT → wmtp: PEFT makes a random (non-zero) adapter, `wmtp run` starts from it (`lora.init_from`) with a
   learning rate of 1e-12 for one step; its checkpoint's CE must equal PEFT's (1e-4).

Usage (where torch, transformers, peft and tokenizers are installed, e.g. the GPU machine):
  python3 tests/interop/peft_roundtrip.py --wmtp target/release/wmtp [--plugin plugins/baseline.wasm]
Prints the differences; exit status 1 when one is over its tolerance.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

TEXT = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # five\n"
TOL = 1e-4


def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stdout + r.stderr


def wmtp_ce(wmtp, model, text):
    """`wmtp perplexity`'s mean next-token CE of `text` and how many tokens it scored."""
    out = sh(wmtp, "perplexity", "--model", model, "--text", text)
    m = re.search(r"tokens (\d+)\s+cross-entropy ([0-9.]+) nats", out)
    if not m:
        sys.exit(f"unexpected `wmtp perplexity` output: {out}")
    return float(m.group(2)), int(m.group(1))


def with_bos(ids, n):
    """The ids wmtp scored: with the BOS token (id 0, `<s>`) when it counted one more."""
    return [0] + ids if n == len(ids) + 1 else ids


def hf_ce(model, ids):
    import torch
    with torch.no_grad():
        x = torch.tensor([ids])
        logits = model(x).logits[0, :-1].float()
        return torch.nn.functional.cross_entropy(logits, x[0, 1:]).item(), logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wmtp", required=True)
    ap.add_argument("--plugin", default="plugins/baseline.wasm")
    a = ap.parse_args()
    import torch
    import transformers
    import peft
    import tokenizers
    torch.manual_seed(0)
    fails = []
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "base")
        # tokenizer: byte-level BPE trained on a little code
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                 initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        corpus = [TEXT * 3, "def mul(a, b):\n    return a * b\n", "for i in range(10):\n    print(i)\n"] * 20
        tok.train_from_iterator(corpus, trainer)
        cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
        model = transformers.LlamaForCausalLM(cfg).float().eval()
        model.save_pretrained(base, safe_serialization=True)
        tok.save(os.path.join(base, "tokenizer.json"))
        ids = tok.encode(TEXT).ids
        data = os.path.join(d, "data.jsonl")
        with open(data, "w") as f:
            for line in corpus:
                f.write(json.dumps({"text": line}) + "\n")
        config = os.path.join(d, "run.toml")
        with open(config, "w") as f:
            f.write(f'''[model]
path = "{base}"
n_future_tokens = 2
extra_heads_init = "copy"
device = "cpu"
[data]
train = "{data}"
val_fraction = 0.0
max_length = 64
[training]
use_lora = true
steps = 3
batch_size = 2
grad_accum = 1
lr = 0.01
seed = 1
[lora]
rank = 4
alpha = 8
target_modules = ["all-linear"]
[runtime]
progress = false
eval_every = 0
''')
        # 2. wmtp → PEFT
        run_dir = os.path.join(d, "run")
        sh(a.wmtp, "run", "--pipeline", a.plugin, "--config", config, "--set", f"checkpoint.dir=\"{run_dir}\"")
        ck = sorted(os.path.join(run_dir, "checkpoints", c) for c in os.listdir(os.path.join(run_dir, "checkpoints"))
                    if c.startswith("step-"))[-1]
        adapter = os.path.join(d, "peft")
        sh(a.wmtp, "export", "--format", "peft", "--checkpoint", ck, "--out", adapter)
        base_model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        pm = peft.PeftModel.from_pretrained(base_model, adapter).eval()
        ce_wmtp, n = wmtp_ce(a.wmtp, ck, TEXT)
        ids = with_bos(ids, n)
        ce_peft, logits_peft = hf_ce(pm, ids)
        ce_base, _ = hf_ce(transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval(), ids)
        d1 = abs(ce_peft - ce_wmtp)
        print(f"wmtp → PEFT: CE peft {ce_peft:.6f}, wmtp {ce_wmtp:.6f} (|Δ| {d1:.2e}); the base model's {ce_base:.6f}")
        if d1 > TOL or abs(ce_peft - ce_base) < 1e-3:
            fails.append("wmtp → PEFT CE" if d1 > TOL else "the adapter changes nothing")
        merged = os.path.join(d, "merged")
        sh(a.wmtp, "merge", "--format", "hf", "--checkpoint", ck, "--out", merged)
        mm = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        _, logits_merged = hf_ce(mm, ids)
        d2 = (logits_merged - logits_peft).abs().max().item()
        print(f"wmtp merge --format hf vs PEFT: max |Δ logit| {d2:.2e}")
        if d2 > TOL:
            fails.append("merge --format hf logits")
        # 3. PEFT → wmtp
        fresh = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lcfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                  "up_proj", "down_proj"],
                               init_lora_weights=False, task_type="CAUSAL_LM")
        pm2 = peft.get_peft_model(fresh, lcfg).eval()
        theirs = os.path.join(d, "theirs")
        pm2.save_pretrained(theirs)
        ce_theirs, _ = hf_ce(pm2, ids)
        run2 = os.path.join(d, "run2")
        sh(a.wmtp, "run", "--pipeline", a.plugin, "--config", config, "--set", f"checkpoint.dir=\"{run2}\"",
           "--set", f"lora.init_from=\"{theirs}\"", "--set", "training.steps=1", "--set", "training.lr=1e-12")
        ck2 = sorted(os.path.join(run2, "checkpoints", c) for c in os.listdir(os.path.join(run2, "checkpoints"))
                     if c.startswith("step-"))[-1]
        ce_w2, _ = wmtp_ce(a.wmtp, ck2, TEXT)
        d3 = abs(ce_theirs - ce_w2)
        print(f"PEFT → wmtp (lora.init_from): CE peft {ce_theirs:.6f}, wmtp {ce_w2:.6f} (|Δ| {d3:.2e})")
        if d3 > TOL:
            fails.append("PEFT → wmtp CE")
        print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    if fails:
        sys.exit("FAILED: " + ", ".join(fails))
    print("ok")


if __name__ == "__main__":
    main()
