"""The exercise the project started from: a dummy word-level encoder and a block-less GPT-2.

``gen_text`` draws the helper's parameters under seed 42, as the exercise's reference solution
does, and runs them through the C++ engine.
"""

from __future__ import annotations

import numpy as np

from .engine import generate


class DummyBPE:
    """Whitespace-split words; unknown words become ``<UNK>``."""

    def __init__(self):
        self.encoder_dict = {"hello": 1, "world": 2, "<UNK>": 0}
        self.decoder_dict = {v: k for k, v in self.encoder_dict.items()}

    def encode(self, text: str) -> list[int]:
        unk = self.encoder_dict["<UNK>"]
        return [self.encoder_dict.get(word, unk) for word in text.strip().split()]

    def decode(self, token_ids) -> str:
        return " ".join(self.decoder_dict.get(int(t), "<UNK>") for t in token_ids)


def load_encoder_hparams_and_params(model_size: str = "124M", models_dir: str = "models"):
    """The exercise's helper: dummy encoder, hparams and random parameters.

    The parameters come from NumPy's legacy global RNG, exactly as in the exercise;
    ``model_size`` and ``models_dir`` are accepted for picoGPT compatibility and unused.
    """
    hparams = {"n_ctx": 1024, "n_head": 12}
    params = {
        "wte": np.random.rand(3, 10),
        "wpe": np.random.rand(1024, 10),
        "blocks": [],
        "ln_f": {"g": np.ones(10), "b": np.zeros(10)},
    }
    return DummyBPE(), hparams, params


def seeded_exercise_model():
    """The helper's (encoder, hparams, params) drawn under seed 42, as the exercise's solution
    draws them; the caller's global RNG state is restored afterwards."""
    state = np.random.get_state()
    try:
        np.random.seed(42)
        return load_encoder_hparams_and_params()
    finally:
        np.random.set_state(state)


def gen_text(prompt: str, n_tokens_to_generate: int = 40) -> str:
    """Generate ``n_tokens_to_generate`` words after ``prompt`` with the seed-42 dummy model."""
    encoder, hparams, params = seeded_exercise_model()
    input_ids = encoder.encode(prompt)
    output_ids = generate(input_ids, params, hparams["n_head"], n_tokens_to_generate)
    return encoder.decode(output_ids)
