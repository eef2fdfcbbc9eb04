"""Accuracy cost of packed weights (bf16, int8, int4), and of a bf16 KV cache, against float32,
on the same model.

For each kind of weights and each format it reports, over the positions of a random prompt:
the largest logit error relative to the float32 logits' scale (their standard deviation), the
mean KL divergence KL(p_fp32 ‖ p_packed), and greedy agreement over ``--tokens`` generated tokens
(the share of positions with the same token, and the first position that differs).

Weights (no download; the same seeds every run):
- random: GPT-2's initialisation, N(0, 0.02), LayerNorm gains 1;
- structured: what trained transformers look like to a quantizer — heavy-tailed (Student t, 3
  degrees of freedom) low-rank-plus-noise matrices with a few outlier input channels ×8, and a
  larger logit scale (peaked next-token distributions).

    python benchmarks/eval_precision.py                 # GPT-2 124M shape
    python benchmarks/eval_precision.py --quick         # a small shape, seconds
    python benchmarks/eval_precision.py --llama --llama-perplexity PATH   # + llama.cpp's column (llama_kl.py)
"""

from __future__ import annotations

import argparse
import json
import time

import llama_kl
import numpy as np

import gpt2gen
from gpt2gen import _core
from gpt2gen.packing import FORMATS

SHAPES = {"124M": dict(n_layer=12, n_embd=768, n_head=12, n_vocab=50257, n_ctx=1024),
          "quick": dict(n_layer=4, n_embd=256, n_head=4, n_vocab=8000, n_ctx=512)}


def random_weights(rng, shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.02


def structured_weights(rng, shape):
    rows, cols = shape
    rank = max(4, min(rows, cols) // 16)
    low_rank = rng.standard_t(3, (rows, rank)) @ rng.standard_t(3, (rank, cols)) / rank
    w = low_rank + 0.5 * rng.standard_t(3, shape)
    outliers = rng.choice(rows, size=max(1, rows // 100), replace=False)
    w[outliers] *= 8
    return (w / np.std(w) * 0.04).astype(np.float32)


def make_params(kind, shape, seed=0):
    rng = np.random.default_rng(seed)
    weights = random_weights if kind == "random" else structured_weights
    d, d_ff = shape["n_embd"], 4 * shape["n_embd"]

    def linear(d_in, d_out):
        return {"w": weights(rng, (d_in, d_out)), "b": (rng.standard_normal(d_out) * 0.01).astype(np.float32)}

    def layer_norm():
        return {"g": np.ones(d, np.float32), "b": np.zeros(d, np.float32)}

    blocks = [{"ln_1": layer_norm(), "ln_2": layer_norm(),
               "attn": {"c_attn": linear(d, 3 * d), "c_proj": linear(d, d)},
               "mlp": {"c_fc": linear(d, d_ff), "c_proj": linear(d_ff, d)}}
              for _ in range(shape["n_layer"])]
    ln_f = layer_norm()
    if kind == "structured":
        ln_f["g"] *= 4  # peaked next-token distributions, as a trained model's
    return {"wte": weights(rng, (shape["n_vocab"], d)),
            "wpe": (rng.standard_normal((shape["n_ctx"], d)) * 0.01).astype(np.float32),
            "blocks": blocks, "ln_f": ln_f}


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def evaluate(params, packed, n_head, prompt, n_tokens, kv_cache_dtype="float32"):
    reference, candidate = _core.Model(params, n_head), _core.Model(packed, n_head, kv_cache_dtype)
    a, b = reference.forward(prompt), candidate.forward(prompt)
    lp_a, lp_b = log_softmax(a), log_softmax(b)
    kl = float(np.mean(np.sum(np.exp(lp_a) * (lp_a - lp_b), axis=-1)))
    greedy_a = gpt2gen.generate(prompt[:8], params, n_head, n_tokens)
    greedy_b = gpt2gen.generate(prompt[:8], packed, n_head, n_tokens, kv_cache_dtype=kv_cache_dtype)
    same = [x == y for x, y in zip(greedy_a, greedy_b)]
    first = same.index(False) if False in same else n_tokens
    return {"max_logit_error_rel": float(np.abs(a - b).max() / a.std()),
            "max_logit_error_abs": float(np.abs(a - b).max()),
            "logit_std": float(a.std()),
            "kl_mean": kl,
            "greedy_agreement": sum(same) / n_tokens,
            "first_difference": first}


def print_row(r, n_tokens):
    first = "none" if r["first_difference"] == n_tokens else f"token {r['first_difference']}"
    print(f"| {r['weights']} | {r['format']} | {r['max_logit_error_rel']:.2e} ({r['max_logit_error_abs']:.3g} / "
          f"{r['logit_std']:.3g}) | {r['kl_mean']:.2e} | {100 * r['greedy_agreement']:.1f}% | {first} |",
          flush=True)


def kv_cache_row(kind, params, shape, n_tokens, prompt_length):
    """The bf16 KV cache against the float32 one, float32 weights, over a long prompt (the
    rounding's effect grows with the context attention reads)."""
    n = min(prompt_length, shape["n_ctx"])
    prompt = list(np.random.default_rng(2).integers(0, shape["n_vocab"], n))
    start = time.perf_counter()
    r = evaluate(params, params, shape["n_head"], prompt, n_tokens, kv_cache_dtype="bf16")
    r.update(weights=kind, format="fp32, bf16 KV cache", prompt=n,
             seconds=time.perf_counter() - start)
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small model shape")
    parser.add_argument("--tokens", type=int, default=256, help="greedy tokens compared")
    parser.add_argument("--prompt", type=int, default=64, help="prompt length for logits and KL")
    parser.add_argument("--kv-prompt", type=int, default=1024,
                        help="prompt length for the bf16 KV cache's logits and KL (capped by n_ctx)")
    parser.add_argument("--json", help="also write the results here")
    llama_kl.add_arguments(parser)
    args = parser.parse_args()
    shape = SHAPES["quick" if args.quick else "124M"]
    prompt = list(np.random.default_rng(1).integers(0, shape["n_vocab"], args.prompt))
    results = []
    print(f"shape {'quick' if args.quick else '124M'}: {shape}; prompt {args.prompt} tokens, "
          f"greedy {args.tokens} tokens\n")
    print("| weights | format | max logit error / logit std | mean KL(fp32‖packed) | greedy agreement | first difference |")
    print("|---|---|---|---|---|---|")
    for kind in ("random", "structured"):
        params = make_params(kind, shape)
        for fmt in FORMATS:
            start = time.perf_counter()
            r = evaluate(params, gpt2gen.pack_params(params, fmt), shape["n_head"], prompt, args.tokens)
            r.update(weights=kind, format=fmt, seconds=time.perf_counter() - start)
            results.append(r)
            print_row(r, args.tokens)
        r = kv_cache_row(kind, params, shape, args.tokens, args.kv_prompt)
        results.append(r)
        print_row(r, args.tokens)
    llama_rows = llama_kl.compare(args, shape, make_params, log_softmax) if args.llama else []
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": shape, "results": results, "llama_cpp": llama_rows}, f, indent=2)


if __name__ == "__main__":
    main()
