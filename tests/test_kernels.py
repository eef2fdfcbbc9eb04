"""Each C++ kernel against its NumPy twin in gpt2gen.reference, on random shapes, in float32 and
float64, for every instruction set this CPU supports."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2gen import _testing, reference

kernels = _testing
DTYPES = [np.float32, np.float64]
# float32 kernels accumulate in float32, in another order than NumPy's BLAS.
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ATOL = {np.float32: 2e-5, np.float64: 1e-12}


pytestmark = pytest.mark.usefixtures("every_backend")


def close(actual, expected, dtype, scale=1.0):
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=ATOL[dtype] * scale)


def rand(seed, dtype, *shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


dims = st.integers(1, 80)
seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from(DTYPES)


@settings(max_examples=30, deadline=None)
@given(n=dims, d=dims, seed=seeds, dtype=dtypes)
def test_layer_norm(n, d, seed, dtype):
    x = rand(seed, dtype, n, d, scale=3) + 1.5
    g, b = rand(seed + 1, dtype, d), rand(seed + 2, dtype, d)
    out = kernels.layer_norm(x, g, b)
    assert out.dtype == dtype
    close(out, reference.layer_norm(x, g, b), dtype, scale=10)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5000), seed=seeds, dtype=dtypes)
def test_gelu(n, seed, dtype):
    x = rand(seed, dtype, n, scale=4)
    close(kernels.gelu(x), reference.gelu(x), dtype, scale=4)


def test_gelu_tails():
    x = np.array([-1e4, -20, -5, 0, 5, 20, 1e4], dtype=np.float64)
    np.testing.assert_allclose(kernels.gelu(x), reference.gelu(x), rtol=1e-12, atol=1e-300)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3000), seed=seeds, dtype=dtypes, scale=st.sampled_from([1.0, 30.0, 1e3]))
def test_softmax(n, seed, dtype, scale):
    x = rand(seed, dtype, n, scale=scale)
    out = kernels.softmax(x)
    close(out, reference.softmax(x), dtype)
    assert abs(out.sum() - 1) < 1e-5


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 13), d_in=st.integers(1, 300), d_out=st.integers(1, 300), seed=seeds,
       dtype=dtypes)
def test_linear(n, d_in, d_out, seed, dtype):
    x, w, b = rand(seed, dtype, n, d_in), rand(seed + 1, dtype, d_in, d_out), rand(seed + 2, dtype, d_out)
    close(kernels.linear(x, w, b), reference.linear(x, w, b), dtype, scale=math.sqrt(d_in))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d_in, d_out", [(0, 300, 200), (3, 0, 200), (0, 0, 5)])
def test_linear_of_empty_arrays(n, d_in, d_out, dtype):
    x, w, b = rand(1, dtype, n, d_in), rand(2, dtype, d_in, d_out), rand(3, dtype, d_out)
    np.testing.assert_array_equal(kernels.linear(x, w, b), np.broadcast_to(b, (n, d_out)))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 9), d=dims, n_vocab=st.integers(1, 400), seed=seeds, dtype=dtypes)
def test_unembed(n, d, n_vocab, seed, dtype):
    x, wte = rand(seed, dtype, n, d), rand(seed + 1, dtype, n_vocab, d)
    close(kernels.unembed(x, wte), x @ wte.T, dtype, scale=math.sqrt(d))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), pos0=st.integers(0, 20), n_vocab=st.integers(1, 50), d=dims,
       seed=seeds, dtype=dtypes)
def test_embedding(n, pos0, n_vocab, d, seed, dtype):
    wte, wpe = rand(seed, dtype, n_vocab, d), rand(seed + 1, dtype, n + pos0, d)
    ids = np.random.default_rng(seed).integers(0, n_vocab, n)
    expected = wte[ids] + wpe[pos0 : pos0 + n]
    np.testing.assert_array_equal(kernels.embedding(wte, wpe, ids, pos0), expected)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), n_head=st.integers(1, 6), head_dim=st.integers(1, 24), seed=seeds,
       dtype=dtypes)
def test_attention(n, n_head, head_dim, seed, dtype):
    d = n_head * head_dim
    qkv = rand(seed, dtype, n, 3 * d, scale=2)
    mask = (1 - np.tri(n, dtype=dtype)) * np.finfo(dtype).min
    q, k, v = (np.split(part, n_head, axis=-1) for part in np.split(qkv, 3, axis=-1))
    expected = np.hstack([reference.attention(q[h], k[h], v[h], mask) for h in range(n_head)])
    close(kernels.attention(qkv, n_head), expected, dtype, scale=4)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), n_head=st.integers(1, 6), head_dim=st.integers(1, 40), seed=seeds)
def test_attention_over_a_bf16_cache(n, n_head, head_dim, seed):
    """Keys and values stored rounded to bf16 (nearest even), attention in float32: the reference
    on the rounded keys and values."""
    d = n_head * head_dim
    qkv = rand(seed, np.float32, n, 3 * d, scale=2)
    mask = (1 - np.tri(n, dtype=np.float32)) * np.finfo(np.float32).min
    q, k, v = np.split(qkv, 3, axis=-1)
    k, v = reference.round_to_bf16(k), reference.round_to_bf16(v)
    q, k, v = (np.split(part, n_head, axis=-1) for part in (q, k, v))
    expected = np.hstack([reference.attention(q[h], k[h], v[h], mask) for h in range(n_head)])
    close(kernels.attention(qkv, n_head, "bf16"), expected, np.float32, scale=4)


def test_kernels_refuse_bad_input():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.gelu(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="shapes"):
        kernels.linear(x, np.zeros((4, 5), np.float32), np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="float32 array"):
        kernels.linear(x, np.zeros((3, 5), np.float64), np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="n_head"):
        kernels.attention(np.zeros((2, 9), np.float32), 2)
    with pytest.raises(ValueError, match="kv_cache_dtype='bf16' needs float32 parameters"):
        kernels.attention(np.zeros((2, 6), np.float64), 2, "bf16")
