"""A row computed in a batch of rows is bit-identical to the same row computed alone (the decode
step, n = 1), whatever the batch size, the tiling and the thread count: linear and unembed
accumulate every output element in one fixed order."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpt2gen
from gpt2gen import _testing

kernels = _testing


pytestmark = pytest.mark.usefixtures("every_backend")


@pytest.fixture(autouse=True)
def restore_threads():
    before = gpt2gen.num_threads()
    yield
    gpt2gen.set_num_threads(before)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 20), d_in=st.integers(1, 300), d_out=st.integers(1, 700),
       threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_linear_rows_equal_rows_alone(n, d_in, d_out, threads, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(dtype)
    w = rng.standard_normal((d_in, d_out)).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype)
    gpt2gen.set_num_threads(threads)
    batch = kernels.linear(x, w, b)
    gpt2gen.set_num_threads(1 + threads % 3)
    for r in range(n):
        np.testing.assert_array_equal(kernels.linear(x[r : r + 1], w, b)[0], batch[r])
    np.testing.assert_array_equal(kernels.linear(x[: n // 2 + 1], w, b), batch[: n // 2 + 1])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 13), d=st.integers(1, 200), n_vocab=st.integers(1, 500),
       threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_unembed_rows_equal_rows_alone(n, d, n_vocab, threads, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    wte = rng.standard_normal((n_vocab, d)).astype(dtype)
    gpt2gen.set_num_threads(threads)
    batch = kernels.unembed(x, wte)
    gpt2gen.set_num_threads(1 + threads % 3)
    for r in range(n):
        np.testing.assert_array_equal(kernels.unembed(x[r : r + 1], wte)[0], batch[r])


# GPT-2 widths: the rows of w split into many segments (the last one partial for 1600), threads
# taking whole segments; batches of 8 (row streaming) and 9 (register tiles).
@pytest.mark.parametrize("d_in, d_out", [(768, 2304), (3072, 768), (1600, 4800)])
def test_gpt2_shaped_linear_rows_equal_rows_alone(d_in, d_out):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, d_in)).astype(np.float32)
    w = (rng.standard_normal((d_in, d_out)) * 0.02).astype(np.float32)
    b = rng.standard_normal(d_out).astype(np.float32)
    gpt2gen.set_num_threads(1)
    alone = [kernels.linear(x[r : r + 1], w, b)[0] for r in range(9)]
    for threads in (1, 2, 3, 4):
        gpt2gen.set_num_threads(threads)
        for n in (1, 8, 9):
            batch = kernels.linear(x[:n], w, b)
            for r in range(n):
                np.testing.assert_array_equal(batch[r], alone[r])
