"""Bad input gets a Python exception that names the problem, never a crash."""

import numpy as np
import pytest

import gpt2gen
from random_models import random_params


@pytest.fixture
def params():
    return random_params(np.random.default_rng(0), n_layer=2, n_embd=32, n_head=4, n_vocab=101, n_ctx=64)


@pytest.mark.parametrize("call", ["generate", "forward"])
@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ([1, -1], ValueError, r"inputs\[1\] = -1 is not a token id.*0\.\.100"),
        ([101], ValueError, r"inputs\[0\] = 101 is not a token id"),
        ([2**40], ValueError, r"is not a token id"),
        (np.array([2**64 - 1], dtype=np.uint64), ValueError, r"is not a token id"),
        ([], ValueError, r"at least one prompt token"),
        ([1.0, 2.0], TypeError, r"integer token ids.*float64"),
        (np.zeros((1, 2, 2), dtype=int), ValueError, r"1-D"),
        (["a"], TypeError, r"integer token ids"),
        ([True], TypeError, r"integer token ids"),
        (None, TypeError, r"integer token ids"),
    ],
)
def test_bad_token_ids(params, call, inputs, error, message):
    with pytest.raises(error, match=message):
        if call == "generate":
            gpt2gen.generate(inputs, params, 4, 3)
        else:
            gpt2gen.forward(inputs, params, 4)


def test_numpy_integer_ids_are_accepted(params):
    for dtype in (np.int8, np.uint16, np.int32, np.int64, np.uint64):
        assert gpt2gen.generate(np.array([1, 2], dtype=dtype), params, 4, 2) == gpt2gen.generate([1, 2], params, 4, 2)


def test_context_overflow_says_the_numbers(params):
    with pytest.raises(ValueError, match=r"60 tokens and 5 more.*65 positions exceed n_ctx = 64"):
        gpt2gen.generate([1] * 60, params, 4, 5)
    with pytest.raises(ValueError, match=r"65 tokens.*n_ctx = 64"):
        gpt2gen.forward([1] * 65, params, 4)


@pytest.mark.parametrize("n, error, message", [
    (-1, ValueError, ">= 0"), (2.5, TypeError, "must be an int"), ("3", TypeError, "must be an int"),
    (True, TypeError, "must be an int"), (2**40, ValueError, "too large"),
])
def test_bad_token_counts(params, n, error, message):
    with pytest.raises(error, match=message):
        gpt2gen.generate([1], params, 4, n)


def test_numpy_integer_count_is_accepted(params):
    assert len(gpt2gen.generate([1], params, 4, np.int64(3))) == 3


@pytest.mark.parametrize("n_head, error, message", [
    (5, ValueError, "n_head = 5 does not divide n_embd = 32"), (0, ValueError, "positive"),
    (-2, ValueError, "positive"), (4.0, TypeError, "n_head must be an int"), (None, TypeError, "n_head"),
])
def test_bad_n_head(params, n_head, error, message):
    with pytest.raises(error, match=message):
        gpt2gen.forward([1], params, n_head)


def test_missing_parameter_is_named(params):
    del params["blocks"][1]["attn"]["c_attn"]["b"]
    with pytest.raises(ValueError, match=r"missing 'blocks\[1\]\.attn\.c_attn\.b'"):
        gpt2gen.forward([1], params, 4)
    with pytest.raises(ValueError, match="missing 'wpe'"):
        gpt2gen.forward([1], {"wte": params["wte"]}, 4)
    with pytest.raises(ValueError, match="missing 'wte'"):
        gpt2gen.forward([1], {}, 4)


def test_misshaped_parameter_names_the_expected_shape(params):
    params["blocks"][1]["mlp"]["c_proj"]["w"] = params["blocks"][1]["mlp"]["c_proj"]["w"].T.copy()
    with pytest.raises(ValueError, match=r"'blocks\[1\]\.mlp\.c_proj\.w' has shape \(32, 128\), expected \(128, 32\)"):
        gpt2gen.forward([1], params, 4)


def test_misshaped_embeddings(params):
    params["wpe"] = params["wpe"][:, :16].copy()
    with pytest.raises(ValueError, match=r"'wpe' has shape \(64, 16\), expected \(64, 32\)"):
        gpt2gen.forward([1], params, 4)
    params["wpe"] = np.zeros(32, np.float32)
    with pytest.raises(ValueError, match="'wpe' must be 2-D"):
        gpt2gen.forward([1], params, 4)


def test_mixed_dtypes_are_named(params):
    params["blocks"][0]["ln_2"]["g"] = params["blocks"][0]["ln_2"]["g"].astype(np.float64)
    with pytest.raises(TypeError, match=r"'blocks\[0\]\.ln_2\.g' has dtype float64 but 'wte' has dtype float32"):
        gpt2gen.forward([1], params, 4)


@pytest.mark.parametrize("mutate, error, message", [
    (lambda p: p.__setitem__("blocks", {"0": 1}), TypeError, "'blocks' must be a list"),
    (lambda p: p["blocks"].__setitem__(0, 3), TypeError, r"blocks\[0\]' must be a dict"),
    (lambda p: p.__setitem__("wte", [[1.0]]), TypeError, "'wte' has dtype|'wte' must be a NumPy array"),
    (lambda p: p.__setitem__("wte", np.zeros((0, 32), np.float32)), ValueError, "n_vocab"),
    (lambda p: p["ln_f"].__setitem__("g", "x"), TypeError, "'ln_f.g' must be a NumPy array"),
])
def test_malformed_structure(params, mutate, error, message):
    mutate(params)
    with pytest.raises(error, match=message):
        gpt2gen.forward([1], params, 4)


def test_params_must_be_a_dict():
    with pytest.raises(TypeError, match="picoGPT"):
        gpt2gen.forward([1], [1, 2], 4)


def test_n_head_need_not_divide_without_blocks():
    params = random_params(np.random.default_rng(1), n_layer=0, n_embd=10, n_head=1, n_vocab=3)
    assert gpt2gen.forward([1], params, 12).shape == (1, 3)


def test_nan_weights_do_not_crash(params):
    params["blocks"][0]["mlp"]["c_fc"]["w"][3, 5] = np.nan
    logits = gpt2gen.forward([1, 2], params, 4)
    assert np.isnan(logits).all()
    assert gpt2gen.generate([1, 2], params, 4, 3) == [0, 0, 0]  # np.argmax of all-NaN is 0


def test_callback_exception_propagates(params):
    def boom(token):
        raise RuntimeError("stop here")
    with pytest.raises(RuntimeError, match="stop here"):
        gpt2gen.generate([1], params, 4, 5, on_token=boom)
    assert len(gpt2gen.generate([1], params, 4, 5)) == 5
