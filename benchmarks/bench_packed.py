# python benchmarks/bench_packed.py [reps] [fp32,bf16,int8,int4]
# Decode/prefill tok/s on the GPT-2 124M shape with random weights. Under interference from other
# processes, each time is the minimum over reps (and the median is shown too).
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import gpt2gen
from gpt2gen.packing import FORMATS, pack_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from random_models import random_params  # noqa: E402


def seconds(params, n_new):
    """Wall time of generating n_new tokens after a 32-token prompt."""
    t = time.perf_counter()
    gpt2gen.generate(list(range(1, 33)), params, 12, n_new)
    return time.perf_counter() - t


print('gpt2gen from', gpt2gen.__file__, 'backend', gpt2gen.backend(), 'threads', gpt2gen.num_threads())
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
fmts = sys.argv[2].split(',') if len(sys.argv) > 2 else ["fp32", *FORMATS]
p = random_params(np.random.default_rng(0), n_layer=12, n_embd=768, n_head=12, n_vocab=50257, n_ctx=1024, scale=0.02)
for name in fmts:
    params = p if name == "fp32" else pack_params(p, name)
    seconds(params, 2)
    t1s, t33s = [], []
    for _ in range(reps):
        t1s.append(seconds(params, 1))
        t33s.append(seconds(params, 33))
    t1, t33 = min(t1s), min(t33s)
    m1, m33 = statistics.median(t1s), statistics.median(t33s)
    print(f"{name}: decode {32/(t33-t1):6.1f} tok/s (min times; medians {32/(m33-m1):6.1f}) | "
          f"prefill32 {32/t1:5.0f} tok/s (median {32/m1:5.0f})", flush=True)
