#!/usr/bin/env python3
"""Rewrites the weights of an exported Hugging Face checkpoint with wide random values
(unit-variance embeddings, matrices scaled by 1/sqrt(fan-in), norms around one), so that
attention and routing depend strongly on every weight. Used to check implementations against
each other: with the genesis N(0, 0.02^2) weights attention is nearly uniform and a RoPE
mistake would go unnoticed.

Usage: python3 scripts/wide_checkpoint.py SRC_DIR DST_DIR [SEED]   (needs numpy, safetensors)
"""
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
dst.mkdir(parents=True, exist_ok=False)
for name in ["config.json", "tokenizer.json"]:
    shutil.copy(src / name, dst / name)
tensors = load_file(src / "model.safetensors")
out = {}
for name, t in tensors.items():
    if name.endswith("norm.weight"):
        v = 1.0 + 0.2 * rng.standard_normal(t.shape)
    elif "embed" in name:
        v = rng.standard_normal(t.shape)
    elif name.endswith("gate.weight"):
        v = 2.0 * rng.standard_normal(t.shape) / np.sqrt(t.shape[-1])
    else:
        v = rng.standard_normal(t.shape) / np.sqrt(t.shape[-1])
    out[name] = v.astype(np.float32)
save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
