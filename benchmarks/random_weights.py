"""Random float32 weights in GPT-2's shapes, for the benchmarks (speed does not depend on them)."""

import numpy as np


def gpt2_params(n_layer: int, d: int, n_vocab: int = 50257, n_ctx: int = 1024, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.02):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    def ln():
        return {"g": 1 + normal(d, scale=0.1), "b": normal(d)}

    def lin(i, o):
        return {"w": normal(i, o), "b": normal(o)}

    return {
        "wte": normal(n_vocab, d, scale=0.1),
        "wpe": normal(n_ctx, d, scale=0.01),
        "blocks": [{"ln_1": ln(), "attn": {"c_attn": lin(d, 3 * d), "c_proj": lin(d, d)},
                    "ln_2": ln(), "mlp": {"c_fc": lin(d, 4 * d), "c_proj": lin(4 * d, d)}}
                   for _ in range(n_layer)],
        "ln_f": ln(),
    }
