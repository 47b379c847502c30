#!/usr/bin/env python3
"""Writes small valid seed inputs for the parser fuzz targets into fuzz/corpus/<target>/
(git-ignored): npz archives made by numpy, safetensors files (single and sharded-with-index,
in the target's one-byte-mode framing) laid out by the format's spec, the committed tiny
SentencePiece model and Jarvis tokenizer.json. The GGUF seeds come from tests/hostile.rs."""
import io, json, os, struct, sys
import numpy as np

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)

def out(target, name, data):
    d = os.path.join(root, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

for i, arrays in enumerate([
    {"a": np.arange(6, dtype=np.float32).reshape(2, 3)},
    {"w": np.ones((4,), np.float16), "b": np.zeros((2, 2), np.int64)},
]):
    for comp in (False, True):
        b = io.BytesIO()
        (np.savez_compressed if comp else np.savez)(b, **arrays)
        out("npz_reader", f"seed{i}{'z' if comp else ''}.npz", b.getvalue())
out("npz_reader", "plain.npy", (lambda b: (np.save(b, np.eye(3, dtype=np.float32)), b.getvalue())[1])(io.BytesIO()))

def safetensors(tensors):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

st = safetensors({
    "model.embed_tokens.weight": ("F32", [2, 2], np.arange(4, dtype=np.float32).tobytes()),
    "model.norm.weight": ("BF16", [2], b"\x80\x3f\x00\x40"),
})
out("safetensors_shards", "single", b"\x00" + st)
index = json.dumps({"metadata": {}, "weight_map": {
    "model.embed_tokens.weight": "s.safetensors", "model.norm.weight": "s.safetensors"}}).encode()
out("safetensors_shards", "sharded", b"\x01" + index + b"\x00" + st)

for p in ["fixtures/gemma3/tiny-causal/tokenizer.model", "fixtures/gemma3/tokenizer/tokenizer.model"]:
    with open(os.path.join(repo, p), "rb") as f:
        out("sentencepiece_model", os.path.basename(os.path.dirname(p)) + ".model", f.read())
for p in ["fixtures/jarvis/tiny-norm/tokenizer.json"]:
    with open(os.path.join(repo, p), "rb") as f:
        out("jarvis_tokenizer", "tiny-norm.json", f.read())
print("seeds written under", os.path.join(root, "corpus"), file=sys.stderr)
