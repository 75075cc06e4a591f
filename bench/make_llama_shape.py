#!/usr/bin/env python3
"""Writes an HF-layout Llama checkpoint of a given shape with constant bf16 weights (config.json +
model.safetensors), for measuring load time and peak memory without downloading a model:

  python3 bench/make_llama_shape.py --shape 7b OUT_DIR
  /usr/bin/time -v target/release/wmtp info --model OUT_DIR --dtype bf16 --n-future-tokens 4

Only the standard library: the safetensors file is written directly (JSON header + raw little-endian data).
"""
import argparse
import json
import os
import struct

SHAPES = {
    # Llama-2-7B
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=300),
}


def tensors(c):
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    kv = hd * c["num_key_value_heads"]
    yield "model.embed_tokens.weight", (v, d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (d,)
        yield p + "self_attn.q_proj.weight", (d, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, d)
        yield p + "post_attention_layernorm.weight", (d,)
        yield p + "mlp.gate_proj.weight", (f, d)
        yield p + "mlp.up_proj.weight", (f, d)
        yield p + "mlp.down_proj.weight", (d, f)
    yield "model.norm.weight", (d,)
    yield "lm_head.weight", (v, d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("out")
    a = ap.parse_args()
    c = SHAPES[a.shape]
    os.makedirs(a.out, exist_ok=True)
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0,
               max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
               hidden_act="silu", torch_dtype="bfloat16", **c)
    with open(os.path.join(a.out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    header, off = {}, 0
    items = list(tensors(c))
    for name, shape in items:
        n = 2
        for s in shape:
            n *= s
        header[name] = dict(dtype="BF16", shape=list(shape), data_offsets=[off, off + n])
        off += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    chunk = struct.pack("<H", 0x3C00) * (1 << 22)  # bf16 0.0078125, 8 MiB at a time
    with open(os.path.join(a.out, "model.safetensors"), "wb") as fh:
        fh.write(struct.pack("<Q", len(h)) + h)
        left = off
        while left:
            k = min(left, len(chunk))
            fh.write(chunk[:k])
            left -= k
    print(f"wrote {a.out}: {len(items)} tensors, {off / 2**30:.2f} GiB of bf16")


if __name__ == "__main__":
    main()
