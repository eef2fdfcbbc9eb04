"""The exercise: the seed's helper, and gen_text equal to the NumPy reference on its parameters."""

import numpy as np
import pytest

import gpt2gen
from gpt2gen import reference


def reference_gen_text(prompt, n_tokens):
    """The exercise's reference solution, computed with the NumPy reference only."""
    np.random.seed(42)
    vocab = {"hello": 1, "world": 2, "<UNK>": 0}
    wte, wpe = np.random.rand(3, 10), np.random.rand(1024, 10)
    params = {"wte": wte, "wpe": wpe, "blocks": [], "ln_f": {"g": np.ones(10), "b": np.zeros(10)}}
    ids = [vocab.get(word, 0) for word in prompt.strip().split()]
    new = reference.generate(ids, params, 12, n_tokens)
    words = {v: k for k, v in vocab.items()}
    return " ".join(words[t] for t in new)


@pytest.mark.parametrize("prompt", ["hello", "world", "hello world", "foo", "  hello   bar world ",
                                    "world hello hello"])
@pytest.mark.parametrize("n_tokens", [1, 5, 40, 200])
def test_gen_text_equals_reference(prompt, n_tokens):
    assert gpt2gen.gen_text(prompt, n_tokens) == reference_gen_text(prompt, n_tokens)


def test_worked_example_real_output():
    # The seed's worked example says "world <UNK> <UNK> <UNK> <UNK>"; the faithful computation
    # under seed 42 gives this (README explains why).
    assert gpt2gen.gen_text("hello", 5) == "hello hello hello <UNK> <UNK>"
    assert gpt2gen.gen_text("hello", n_tokens_to_generate=5).split() == ["hello"] * 3 + ["<UNK>"] * 2


def test_gen_text_default_length_and_rng_state_untouched():
    np.random.seed(123)
    state = np.random.get_state()
    text = gpt2gen.gen_text("hello")
    assert len(text.split()) == 40
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:2], after[1:2])) and state[2:] == after[2:]
    np.random.seed(999)  # the caller's RNG state does not change the result
    assert gpt2gen.gen_text("hello") == text


def test_helper_matches_the_seed():
    np.random.seed(42)
    encoder, hparams, params = gpt2gen.load_encoder_hparams_and_params()
    np.random.seed(42)
    assert hparams == {"n_ctx": 1024, "n_head": 12}
    np.testing.assert_array_equal(params["wte"], np.random.rand(3, 10))
    np.testing.assert_array_equal(params["wpe"], np.random.rand(1024, 10))
    assert params["blocks"] == []
    np.testing.assert_array_equal(params["ln_f"]["g"], np.ones(10))
    np.testing.assert_array_equal(params["ln_f"]["b"], np.zeros(10))
    assert encoder.encode(" hello  world foo ") == [1, 2, 0]
    assert encoder.decode([2, 1, 0, 7]) == "world hello <UNK> <UNK>"


def test_empty_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one prompt token"):
        gpt2gen.gen_text("   ", 3)
