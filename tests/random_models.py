"""Random GPT-2 parameters in picoGPT's layout, for tests that need no checkpoint."""

import numpy as np


def random_params(rng, *, n_layer=2, n_embd=32, n_head=4, n_vocab=101, n_ctx=64, d_ff=None,
                  dtype=np.float32, scale=0.2):
    d_ff = 4 * n_embd if d_ff is None else d_ff

    def normal(*shape):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def layer_norm():
        return {"g": (1 + normal(n_embd)).astype(dtype), "b": normal(n_embd)}

    def linear(d_in, d_out):
        return {"w": normal(d_in, d_out), "b": normal(d_out)}

    blocks = [
        {
            "ln_1": layer_norm(),
            "attn": {"c_attn": linear(n_embd, 3 * n_embd), "c_proj": linear(n_embd, n_embd)},
            "ln_2": layer_norm(),
            "mlp": {"c_fc": linear(n_embd, d_ff), "c_proj": linear(d_ff, n_embd)},
        }
        for _ in range(n_layer)
    ]
    return {
        "wte": normal(n_vocab, n_embd),
        "wpe": normal(n_ctx, n_embd),
        "blocks": blocks,
        "ln_f": layer_norm(),
    }


def leaves(params, path=""):
    """(key path, array) for every array, with paths like 'blocks[1].attn.c_attn.w'."""
    if isinstance(params, dict):
        for key, value in params.items():
            yield from leaves(value, f"{path}.{key}" if path else key)
    elif isinstance(params, list):
        for i, value in enumerate(params):
            yield from leaves(value, f"{path}[{i}]")
    else:
        yield path, params
