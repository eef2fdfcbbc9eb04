#!/usr/bin/env python
"""Decode speed against the context length, float32 vs bf16 KV cache (random GPT-2 124M weights).

Per context C: a prompt of C tokens, then 1 + N tokens; the decode rate is N over the time from
the first token (after the prefill) to the last, as on_token sees them. The configurations
alternate within each round; median and best over the rounds.

    python benchmarks/bench_context.py --threads 2 --rounds 5
    python benchmarks/bench_context.py --dtypes float32,int8 --contexts 32,1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from random_weights import gpt2_params  # noqa: E402

import gpt2gen  # noqa: E402


def decode_seconds(prompt, params, n_new, kv_cache_dtype):
    """Seconds per decoded token, the prefill excluded."""
    seen = []
    gpt2gen.generate(prompt, params, 12, 1 + n_new, kv_cache_dtype=kv_cache_dtype,
                     on_token=lambda _: seen.append(time.perf_counter()))
    return (seen[-1] - seen[0]) / n_new


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", default="32,256,1000", help="prompt lengths (≤ 1024 − new tokens)")
    p.add_argument("--kv", default="float32,bf16", help="KV cache dtypes")
    p.add_argument("--dtypes", default="float32", help="weight formats: float32, bf16, int8")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        gpt2gen.set_num_threads(a.threads)
    base = gpt2_params(12, 768)
    weights = {d: base if d == "float32" else gpt2gen.pack_params(base, d) for d in a.dtypes.split(",")}
    contexts = [int(c) for c in a.contexts.split(",")]
    configs = [(d, kv, c) for d in weights for kv in a.kv.split(",") for c in contexts]
    prompts = {c: [(i * 7919 + 13) % 50257 for i in range(c)] for c in contexts}
    times = {cfg: [] for cfg in configs}
    loads = []
    for _ in range(a.rounds):
        for d, kv, c in configs:
            times[(d, kv, c)].append(decode_seconds(prompts[c], weights[d], a.new_tokens, kv))
        loads.append(os.getloadavg()[0])
    print(f"backend {gpt2gen.backend()}, {gpt2gen.num_threads()} threads, {a.rounds} rounds, "
          f"{a.new_tokens} new tokens, load averages {min(loads):.1f}..{max(loads):.1f}")
    print("| weights | KV cache | context | decode tok/s (median) | best | × context "
          f"{contexts[0]} (median) |")
    print("|---|---|---:|---:|---:|---:|")
    for d, kv, c in configs:
        t = times[(d, kv, c)]
        ratio = statistics.median(times[(d, kv, contexts[0])]) / statistics.median(t)
        print(f"| {d} | {kv} | {c} | {1 / statistics.median(t):.1f} | {1 / min(t):.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
