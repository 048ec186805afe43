#!/usr/bin/env python3
"""Loads a GGUF file exported by `blyan export gguf` in llama.cpp (llama-cpp-python) and
compares its logits with Blyan's own forward pass on the same tokens.

Usage:
  python3 scripts/gguf_llamacpp_check.py DATA_DIR FILE.gguf f32|int8

Needs `pip install llama-cpp-python numpy` and a release build of the `logits` example
(`cargo build --release -p blyan-model --example logits`). Prints the largest absolute
difference relative to the largest logit, per position and overall.
"""
import json
import subprocess
import sys

import numpy as np
from llama_cpp import Llama

data_dir, gguf, precision = sys.argv[1], sys.argv[2], sys.argv[3]
tokens = [256] + list(b"The chain holds the model.")
ours = json.loads(
    subprocess.check_output(
        ["target/release/examples/logits", f"{data_dir}/chain", precision]
        + [str(t) for t in tokens]
    )
)
llm = Llama(model_path=gguf, n_ctx=256, logits_all=True, verbose=False, n_threads=2)
llm.eval(tokens)
theirs = np.array(llm.scores[: len(tokens)], dtype=np.float64)
ours = np.array(ours, dtype=np.float64)
scale = np.abs(ours).max()
worst = np.abs(ours - theirs).max(axis=1) / scale
print(json.dumps({
    "positions": len(tokens),
    "vocab": ours.shape[1],
    "max_abs_logit": scale,
    "relative_max_diff_per_position": [round(float(x), 6) for x in worst],
    "relative_max_diff": float(worst.max()),
    "argmax_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean()),
}))
