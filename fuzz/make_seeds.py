#!/usr/bin/env python3
"""Writes small valid seed files for every fuzz target into fuzz/seeds/<target>/ (committed; the fuzzers
mutate from them and tests/fuzz_regressions.rs replays them). Needs NumPy only. Licence: these seeds are
generated data, Apache-2.0 like the rest of the repository.

  python3 fuzz/make_seeds.py
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures"))
from make_tiny_checkpoints import write_safetensors, write_torch_zip  # noqa: E402


def out(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(d, name), mode) as f:
        f.write(data)


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, vtype, payload):
    return gguf_string(key) + struct.pack("<I", vtype) + payload


def gguf_file(n_layers=1, dim=8, vocab=6, first_dims=None, first_offset=None):
    """A GGUF v3 llama model: metadata, a llama (SentencePiece) vocabulary and f32 tensors."""
    U32, F32, STR, ARR = 4, 6, 8, 9
    tokens = ["<unk>", "<s>", "</s>", "▁a", "b", "▁ab"][:vocab]
    kvs = [
        gguf_kv("general.architecture", STR, gguf_string("llama")),
        gguf_kv("llama.embedding_length", U32, struct.pack("<I", dim)),
        gguf_kv("llama.block_count", U32, struct.pack("<I", n_layers)),
        gguf_kv("llama.attention.head_count", U32, struct.pack("<I", 2)),
        gguf_kv("llama.feed_forward_length", U32, struct.pack("<I", 16)),
        gguf_kv("llama.context_length", U32, struct.pack("<I", 64)),
        gguf_kv("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", 1e-5)),
        gguf_kv("tokenizer.ggml.model", STR, gguf_string("llama")),
        gguf_kv("tokenizer.ggml.tokens", ARR,
                struct.pack("<IQ", STR, len(tokens)) + b"".join(gguf_string(t) for t in tokens)),
        gguf_kv("tokenizer.ggml.scores", ARR,
                struct.pack("<IQ", F32, len(tokens)) + b"".join(struct.pack("<f", -i) for i in range(len(tokens)))),
        gguf_kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 1)),
        gguf_kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 2)),
    ]
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,), "output.weight": (vocab, dim)}
    for i in range(n_layers):
        for n, s in [("attn_q", (dim, dim)), ("attn_k", (dim, dim)), ("attn_v", (dim, dim)),
                     ("attn_output", (dim, dim)), ("ffn_gate", (16, dim)), ("ffn_down", (dim, 16)),
                     ("ffn_up", (16, dim)), ("attn_norm", (dim,)), ("ffn_norm", (dim,))]:
            shapes[f"blk.{i}.{n}.weight"] = s
    infos, blobs, offset = b"", [], 0
    for k, (name, shape) in enumerate(shapes.items()):
        dims = list(reversed(shape))  # GGUF lists dimensions innermost first
        if k == 0 and first_dims is not None:
            dims = first_dims
        infos += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        off = first_offset if k == 0 and first_offset is not None else offset
        infos += struct.pack("<IQ", 0, off)  # type F32, offset
        raw = rng.standard_normal(shape).astype("<f4").tobytes()
        raw += b"\0" * ((32 - len(raw) % 32) % 32)
        blobs.append(raw)
        offset += len(raw)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(kvs)) + b"".join(kvs) + infos
    head += b"\0" * ((32 - len(head) % 32) % 32)
    return head + b"".join(blobs)


def proto_varint(n):
    b = b""
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            b += bytes([x | 0x80])
        else:
            return b + bytes([x])


def proto_bytes(field, payload):
    return proto_varint(field << 3 | 2) + proto_varint(len(payload)) + payload


def sentencepiece_model():
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("▁", -1.0, 1), ("▁a", -2.0, 1),
              ("b", -3.0, 1), ("é", -4.0, 1), ("<0x41>", 0.0, 6)]
    body = b""
    for p, score, kind in pieces:
        piece = proto_bytes(1, p.encode()) + proto_varint(2 << 3 | 5) + struct.pack("<f", score)
        piece += proto_varint(3 << 3 | 0) + proto_varint(kind)
        body += proto_bytes(1, piece)
    return body


def regression(target, name, data):
    """An input that once crashed a reader (kept in fuzz/regressions/, replayed by the tests)."""
    d = os.path.join(HERE, "regressions", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(os.path.join(HERE, "seeds"), ignore_errors=True)
    # found by tests/fuzz_regressions.rs's mutations: candle's GGUF reader multiplies the dimensions
    # unchecked (overflow panic in debug builds, a wrapped size in release)
    regression("gguf", "dims_overflow.gguf", gguf_file(first_dims=[1 << 40, 1 << 40]))
    regression("gguf", "offset_past_end.gguf", gguf_file(first_offset=1 << 62))
    # found by `cargo fuzz run gguf`: a tensor with a zero dimension reaches candle's from_raw_data with a
    # dangling pointer cast to a 4-byte-aligned type (undefined behaviour, aborts in debug builds)
    regression("gguf", "zero_elements.gguf", gguf_file(first_dims=[0, 8]))
    out("gguf", "tiny_llama.gguf", gguf_file())
    rng = np.random.default_rng(1)
    t = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
    path = os.path.join(HERE, "seeds", "safetensors")
    os.makedirs(path, exist_ok=True)
    write_safetensors(os.path.join(path, "two.safetensors"), t)
    path = os.path.join(HERE, "seeds", "pth")
    os.makedirs(path, exist_ok=True)
    write_torch_zip(os.path.join(path, "two.pth"), t, bf16_keys={"b"})
    out("jsonl", "alpaca.jsonl", "\n".join(json.dumps(r) for r in [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"instruction": "Reverse", "input": "abc", "output": "cba", "reward": 1.0, "problem_id": "p1"},
        {"text": "Say é, then stop."},
    ]) + "\n")
    with open(os.path.join(HERE, "..", "configs", "default.toml")) as f:
        out("config_toml", "default.toml", f.read())
    with open(os.path.join(HERE, "..", "configs", "rho1_lora.toml")) as f:
        out("config_toml", "rho1_lora.toml", f.read())
    out("sentencepiece", "tiny.model", sentencepiece_model())
    out("adapter_config", "adapter_config.json", json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
        "target_modules": ["wq", "wk", "wv", "wo"], "use_rslora": False, "base_model_name_or_path": "tiny",
        "bias": "none", "wmtp_format_version": 1, "wmtp_n_future_tokens": 2,
        "wmtp_value_head": None}, indent=1))


if __name__ == "__main__":
    main()
