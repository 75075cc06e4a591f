#!/usr/bin/env python3
"""wmtp vs PEFT: the same LoRA fine-tune of SmolLM2-135M-Instruct, trained by both, held-out CE compared
(issue 24, item 1; bench/parity/README.md says what is compared and how to read the verdict).

Both sides: the same GGUF weights (transformers dequantises them through the `gguf` package; wmtp reads
the file itself), the same `{text}` rows (bench/parity/make_data.py: HumanEval prompt + canonical solution,
131 training / 33 held-out problems split by id), token ids [BOS] + text + [EOS] with BOS/EOS from the
GGUF's metadata, the BOS only when its `tokenizer.ggml.add_bos_token` says so (SmolLM2: it does not), samples longer than --max-length dropped, LoRA r8 α16 dropout 0 on q/k/v/o (wmtp: wq wk
wv wo), A Kaiming-uniform and B zero, AdamW β 0.9/0.95 ε 1e-8 weight decay 0.01 (every LoRA matrix is
2-D), a linear warm-up over 5% of the steps then cosine to 0.1·peak (wmtp's schedule, written out below),
global-norm clip 1.0, batch 8, f32, next-token loss only (`n_future_tokens = 1`): the mean CE over the
batch's target tokens. Each side shuffles the training rows per epoch with its own seeded generator, so
the two sides see different orders: the comparison is of means over seeds.

Held-out CE = Σ CE / Σ tokens over every target token of the held-out rows, at steps 0, N/4, N/2, 3N/4, N.
Pass: at step 0 |Δ| ≤ 1e-3; at each later step |mean_wmtp − mean_peft| ≤ max(2·s.e.(PEFT's mean), 0.02).

Usage (torch, transformers, peft and gguf importable; wmtp built, plugins/baseline.wasm built):
  bench/parity/make_data.py .cache/parity
  python3 bench/parity/parity.py --wmtp target/release/wmtp --device cuda --steps 100 --seeds 1 2 3
  python3 bench/parity/parity.py --wmtp target/release/wmtp --device cpu --steps 20 --seeds 1 2 3   # CPU
Writes OUT/parity.json (every curve) and prints the table; exit status 1 when the verdict is FAIL.
"""
import argparse
import copy
import json
import math
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOL_STEP0 = 1e-3
TOL_NATS = 0.02


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def lr_factor(step, total, warmup_ratio=0.05, min_lr_ratio=0.1):
    """wmtp's schedule (host/src/train/optim.rs, Schedule::factor): the multiplier of the peak lr at
    0-based optimizer step `step`: linear warm-up from 1e-8 over round(warmup_ratio·total) steps, then
    cosine from 1 to min_lr_ratio."""
    warm = round(warmup_ratio * total)
    if step < warm:
        return 1e-8 + (1 - 1e-8) * (step + 1) / warm
    rest = max(total - warm, 1)
    p = min((step - warm) / rest, 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def eval_steps(steps):
    every = max(steps // 4, 1)
    return every, sorted({s for s in range(0, steps + 1, every)} | {steps})


# ---------------------------------------------------------------- wmtp side

def wmtp_run(a, seed, out_dir):
    """One `wmtp run` of the baseline plugin; returns {step: held-out head-0 CE}."""
    every, _ = eval_steps(a.steps)
    run_dir = os.path.join(out_dir, f"wmtp-seed-{seed}")
    sets = {
        "model.path": json.dumps(a.gguf), "model.device": json.dumps(a.device),
        "data.train": json.dumps(os.path.join(a.data, "train.jsonl")),
        "data.validation": json.dumps(os.path.join(a.data, "val.jsonl")),
        "data.max_length": a.max_length, "training.seed": seed, "training.steps": a.steps,
        "training.lr": a.lr, "runtime.eval_every": every, "checkpoint.dir": json.dumps(run_dir),
    }
    cmd = [a.wmtp, "run", "--pipeline", a.plugin, "--config", os.path.join(HERE, "wmtp_parity.toml")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"wmtp failed ({' '.join(cmd)}):\n{r.stdout}\n{r.stderr}")
    curve, train = {}, {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "val_ce_h0" in m:
                curve[int(m["step"])] = m["val_ce_h0"]
            if "loss" in m and "grad_norm" in m:
                train[int(m["step"])] = m["loss"]
    log(f"wmtp seed {seed}: {time.time() - t0:.0f} s, held-out CE {fmt_curve(curve)}")
    return curve, train


# ---------------------------------------------------------------- PEFT side

def gguf_bos_eos(path):
    """BOS (None when `tokenizer.ggml.add_bos_token` is false: no BOS is added) and EOS ids from the
    GGUF's metadata (what wmtp's tokenizer reads)."""
    import gguf
    r = gguf.GGUFReader(path)

    def field(name):
        f = r.fields.get(name)
        return None if f is None else int(f.parts[f.data[0]][0])
    add = r.fields.get("tokenizer.ggml.add_bos_token")
    adds_bos = add is None or bool(add.parts[add.data[0]][0])  # wmtp's default: add one
    bos = field("tokenizer.ggml.bos_token_id") if adds_bos else None
    return bos, field("tokenizer.ggml.eos_token_id")


def encode(tok, rows, bos, eos, max_length):
    """[BOS] (bos not None) + ids(text) + [EOS] per row (wmtp's data/dataset.rs for `{text}` rows),
    dropping longer ones."""
    out = []
    for r in rows:
        ids = ([bos] if bos is not None else []) + tok.encode(r["text"], add_special_tokens=False)
        if eos is not None:
            ids.append(eos)
        if len(ids) <= max_length:
            out.append(ids)
    return out


def collate(batch, pad, device):
    """Right-padded ids, the target mask (1 on every real token after the first) and the attention mask
    (1 on real tokens)."""
    import torch
    t = max(len(s) for s in batch)
    ids = torch.full((len(batch), t), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), t))
    attn = torch.zeros((len(batch), t), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, 1:len(s)] = 1
        attn[i, :len(s)] = 1
    return ids.to(device), mask.to(device), attn.to(device)


def ce_sums(model, ids, mask, attn):
    """(Σ CE·m, Σ m) of next-token prediction over the batch's targets."""
    import torch.nn.functional as F
    logits = model(input_ids=ids, attention_mask=attn).logits
    v = logits.shape[-1]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1), reduction="none")
    m = mask[:, 1:].reshape(-1)
    return (ce * m).sum(), m.sum()


def held_out_ce(model, val, pad, device, batch):
    import torch
    s = n = 0.0
    with torch.no_grad():
        for i in range(0, len(val), batch):
            a, b = ce_sums(model, *collate(val[i:i + batch], pad, device))
            s, n = s + a.item(), n + b.item()
    return s / n


def peft_run(a, base, train, val, pad, seed):
    """One PEFT LoRA run; returns {step: held-out CE} and {step: training loss}."""
    import torch
    import peft
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, a.steps))
    _, at = eval_steps(a.steps)
    rng = random.Random(seed)
    order, index = [], len(train)
    curve, losses = {}, {}
    t0 = time.time()
    for step in range(a.steps + 1):
        if step in at:
            model.eval()
            curve[step] = held_out_ce(model, val, pad, a.device, a.batch)
            model.train()
        if step == a.steps:
            break
        if index >= len(order):
            order, index = list(range(len(train))), 0
            rng.shuffle(order)
        picked = order[index:index + a.batch]
        index += len(picked)
        s, n = ce_sums(model, *collate([train[i] for i in picked], pad, a.device))
        loss = s / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses[step + 1] = loss.item()
    log(f"PEFT seed {seed}: {time.time() - t0:.0f} s, held-out CE {fmt_curve(curve)}")
    return curve, losses


def peft_side(a):
    import torch
    import transformers
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    d, f = os.path.split(os.path.abspath(a.gguf))
    base = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).to(a.device)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    bos, eos = gguf_bos_eos(a.gguf)
    train = encode(tok, read_rows(os.path.join(a.data, "train.jsonl")), bos, eos, a.max_length)
    val = encode(tok, read_rows(os.path.join(a.data, "val.jsonl")), bos, eos, a.max_length)
    pad = eos if eos is not None else 0
    log(f"PEFT side: model and tokenizer from the GGUF in {time.time() - t0:.0f} s; BOS {bos}, EOS {eos}; "
        f"{len(train)} training and {len(val)} held-out rows ≤ {a.max_length} tokens")
    return {s: peft_run(a, base, train, val, pad, s) for s in a.seeds}


# ---------------------------------------------------------------- verdict

def fmt_curve(c):
    return " ".join(f"{s}:{v:.4f}" for s, v in sorted(c.items()))


def mean_se(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def verdict(wm, pf, steps):
    """Prints the table; returns whether every step passes."""
    ok = True
    print(f"\n{'step':>5} | {'wmtp mean ± s.e.':>18} | {'PEFT mean ± s.e.':>18} | {'Δ':>8} | bound  | verdict")
    for s in steps:
        w = [wm[k][0][s] for k in wm]
        p = [pf[k][0][s] for k in pf]
        (mw, sw), (mp, sp) = mean_se(w), mean_se(p)
        d = mw - mp
        bound = TOL_STEP0 if s == 0 else max(2 * sp if sp == sp else 0.0, TOL_NATS)
        good = abs(d) <= bound
        ok &= good
        print(f"{s:>5} | {mw:.4f} ± {sw:.4f}    | {mp:.4f} ± {sp:.4f}    | {d:+.4f} | {bound:.4f} | "
              f"{'pass' if good else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wmtp", default="target/release/wmtp")
    ap.add_argument("--plugin", default="plugins/baseline.wasm")
    ap.add_argument("--gguf", default=".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--data", default=".cache/parity", help="folder with train.jsonl, val.jsonl (make_data.py)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--out", default="runs/parity")
    a = ap.parse_args()
    if a.batch != 8:
        sys.exit("--batch: wmtp_parity.toml trains batch 8; change both together")
    os.makedirs(a.out, exist_ok=True)
    log(f"parity: {a.steps} steps, seeds {a.seeds}, lr {a.lr}, device {a.device}")
    pf = peft_side(a)
    wm = {s: wmtp_run(a, s, a.out) for s in a.seeds}
    _, steps = eval_steps(a.steps)
    ok = verdict(wm, pf, steps)
    import torch
    import transformers
    import peft
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    print(f"versions: {versions}")
    with open(os.path.join(a.out, "parity.json"), "w") as f:
        json.dump({"args": vars(a), "versions": versions, "pass": ok,
                   "wmtp": {s: {"val_ce_h0": c, "loss": t} for s, (c, t) in wm.items()},
                   "peft": {s: {"val_ce_h0": c, "loss": t} for s, (c, t) in pf.items()}}, f, indent=1)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
