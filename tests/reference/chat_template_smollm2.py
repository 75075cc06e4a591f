#!/usr/bin/env python3
"""Reference token ids of SmolLM2-135M-Instruct's own chat template, from Hugging Face transformers'
`apply_chat_template` on the tokenizer it builds from the GGUF (tokenizer.chat_template included), for
tests/smollm2.rs::the_models_chat_template_matches_transformers. Needs transformers and gguf
(scripts/interop-test.sh's .cache/pyref has both):

    .cache/pyref/bin/python tests/reference/chat_template_smollm2.py \\
        .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf > tests/reference/chat_template_smollm2.json
"""
import json
import os
import sys

from transformers import AutoTokenizer

ROWS = [
    ("Add 2 and 3.", "", "5"),
    ("Complete the following Python function.", "def add(a, b):\n    \"\"\"Sum.\"\"\"\n",
     "    return a + b\n"),
    ("Translate to French: good morning", "", "Bonjour !  (with two spaces)\n\nEnd."),
]

path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
out = {"transformers": __import__("transformers").__version__, "rows": []}
for ins, inp, answer in ROWS:
    user = ins if not inp else f"{ins}\n\n{inp}"
    msgs = [{"role": "user", "content": user}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=True)
    # transformers 5 returns a BatchEncoding-like mapping for tokenize=True on some versions
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
    full = list(full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full)
    out["rows"].append({"instruction": ins, "input": inp, "output": answer, "prompt_ids": prompt, "ids": full})
# a multi-turn conversation (a `{messages}` row): the whole rendering's ids
CONVERSATION = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome"},
]
conv = tok.apply_chat_template(CONVERSATION, tokenize=True)
conv = list(conv["input_ids"] if isinstance(conv, dict) or hasattr(conv, "keys") else conv)
out["conversation"] = {"messages": CONVERSATION, "ids": conv}
json.dump(out, sys.stdout, indent=1)
print()
