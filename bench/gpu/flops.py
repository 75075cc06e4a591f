"""Model shapes of wmtp's presets and the FLOP count of one MTP training step (for MFU).

FLOPs of one step on B·T positions (useful work only; activation-checkpointing recomputation is not counted):
  matmul parameters on a token's path  N = n_trunk·P_block + H·(P_block + dim·V)
  forward 2·N, backward dL/dx 2·N, weight gradients 2·N_trained (LoRA: the adapters' own, ~0)
  attention per block (causal, half the T×T scores): forward 2·T·dim per token (QKᵀ and PV), backward 2×
The embedding lookup and elementwise work are not counted.
"""

BASE = dict(vocab_size=32000, multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5, rope_theta=1e4,
            n_kv_heads=None, n_future_tokens=4)
PRESETS = {
    "1b_mtp": dict(BASE, dim=2048, n_layers=22, n_heads=16),
    "7b_1t_4": dict(BASE, dim=4096, n_layers=32, n_heads=32),
}
H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s, vendor datasheet (H100/H200 SXM)


def hidden_dim(a):
    h = 2 * 4 * a["dim"] // 3
    if a.get("ffn_dim_multiplier"):
        h = int(a["ffn_dim_multiplier"] * h)
    m = a["multiple_of"]
    return m * ((h + m - 1) // m)


def block_matmul_params(a):
    d, nh = a["dim"], a["n_heads"]
    hd = d // nh
    kv = (a.get("n_kv_heads") or nh) * hd
    return d * d * 2 + 2 * d * kv + 3 * d * hidden_dim(a)


def lora_params(a, rank=8, targets=("wq", "wk", "wv", "wo")):
    d, nh = a["dim"], a["n_heads"]
    kv = (a.get("n_kv_heads") or nh) * (d // nh)
    f = hidden_dim(a)
    shape = dict(wq=(d, d), wk=(d, kv), wv=(d, kv), wo=(d, d), w1=(d, f), w2=(f, d), w3=(d, f))
    return a["n_layers"] * sum(rank * (shape[t][0] + shape[t][1]) for t in targets)


def step_flops(a, batch, seq, lora):
    H = a["n_future_tokens"]
    n_trunk = a["n_layers"] - H
    pb = block_matmul_params(a)
    n = n_trunk * pb + H * (pb + a["dim"] * a["vocab_size"])
    trained = lora_params(a) if lora else n
    tokens = batch * seq
    attn_fwd = 2 * seq * a["dim"] * tokens * a["n_layers"]  # causal: half of 4·T·dim
    return tokens * (2 * n + 2 * n + 2 * trained) + 3 * attn_fwd
