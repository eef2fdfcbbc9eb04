"""The NumPy reference: GPT-2 written to be read, not to be fast.

This module is the specification the C++ engine is tested against. It follows
picoGPT: every function is the math it is named after, there is no KV cache, and
``generate`` recomputes the whole sequence for every new token. Everything works
in the dtype of the parameters (float32 or float64).
"""

import math

import numpy as np

from .packing import bf16_to_float, float_to_bf16


def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps: float = 1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.var(x, axis=-1, keepdims=True)  # biased, as GPT-2
    return g * (x - mean) / np.sqrt(variance + eps) + b


def linear(x, w, b):  # [m, in] @ [in, out] + [out] -> [m, out]
    return x @ w + b


def ffn(x, c_fc, c_proj):  # [n_seq, n_embd] -> [n_seq, n_embd]
    return linear(gelu(linear(x, **c_fc)), **c_proj)


def attention(q, k, v, mask):  # [n_q, d_k], [n_k, d_k], [n_k, d_v], [n_q, n_k] -> [n_q, d_v]
    # math.sqrt keeps a float32 computation in float32 (np.sqrt of an int is float64).
    return softmax(q @ k.T / math.sqrt(q.shape[-1]) + mask) @ v


def round_to_bf16(x):  # float32 -> the nearest bf16 value (ties to even), as float32
    return bf16_to_float(float_to_bf16(x)).reshape(x.shape)


def mha(x, c_attn, c_proj, n_head, kv_cache_dtype="float32"):  # [n_seq, n_embd] -> [n_seq, n_embd]
    x = linear(x, **c_attn)  # [n_seq, 3 * n_embd]
    q, k, v = np.split(x, 3, axis=-1)
    if kv_cache_dtype == "bf16":  # the keys and values as a bf16 KV cache stores them
        k, v = round_to_bf16(k), round_to_bf16(v)
    qkv_heads = [np.split(part, n_head, axis=-1) for part in (q, k, v)]
    causal_mask = (1 - np.tri(x.shape[0], dtype=x.dtype)) * np.finfo(x.dtype).min
    out_heads = [attention(q, k, v, causal_mask) for q, k, v in zip(*qkv_heads)]
    return linear(np.hstack(out_heads), **c_proj)


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, kv_cache_dtype="float32"):  # pre-LN
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head, kv_cache_dtype=kv_cache_dtype)
    x = x + ffn(layer_norm(x, **ln_2), **mlp)
    return x


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head, kv_cache_dtype="float32"):  # [n_seq] -> [n_seq, n_vocab]
    x = wte[inputs] + wpe[range(len(inputs))]
    for block in blocks:
        x = transformer_block(x, **block, n_head=n_head, kv_cache_dtype=kv_cache_dtype)
    return layer_norm(x, **ln_f) @ wte.T


def generate(inputs, params, n_head, n_tokens_to_generate, kv_cache_dtype="float32"):
    """Greedy decoding by full recomputation; returns only the new token ids.

    ``kv_cache_dtype="bf16"`` (float32 parameters): every key and value rounded to bf16 before
    attention reads it, as the engine's bf16 KV cache stores them.
    """
    inputs = list(inputs)
    for _ in range(n_tokens_to_generate):
        logits = gpt2(inputs, **params, n_head=n_head, kv_cache_dtype=kv_cache_dtype)
        inputs.append(int(np.argmax(logits[-1])))
    return inputs[len(inputs) - n_tokens_to_generate :]
