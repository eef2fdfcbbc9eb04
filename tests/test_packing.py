"""Packed (bf16, int8, int4; int6 for int4's wte) weights: the packing against independent
conversions, the engine's packed kernels against the NumPy reference on the values the packed
weights stand for."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine_requests
import gpt2gen
from gpt2gen import _core, _testing, reference
from gpt2gen.packing import (
    FORMATS,
    MATRIX_FORMATS,
    QUANT_BLOCK,
    bf16_to_float,
    float_to_bf16,
    pack_matrix,
    pack_params,
    quantize,
    unpack_matrix,
    unpack_params,
)
from random_models import leaves, random_params

QUANTIZED = ["int8", "int4", "int6"]
Q_RANGE = {"int8": (-127, 127), "int4": (-8, 7), "int6": (-32, 31)}


def test_bf16_rounds_to_nearest_even_like_torch():
    torch = pytest.importorskip("torch", reason="torch's bfloat16 is the reference conversion")
    rng = np.random.default_rng(0)
    x = np.concatenate([(rng.standard_normal(10000) * 10.0 ** rng.integers(-30, 30, 10000)).astype(np.float32),
                        np.array([0, -0.0, np.inf, -np.inf, 1 + 2**-8, 1 + 3 * 2**-8], np.float32)])
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float_to_bf16(x), theirs)
    assert np.isnan(bf16_to_float(float_to_bf16(np.array([np.nan], np.float32))))[0]


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 100), cols=st.integers(1, 70), fmt=st.sampled_from(QUANTIZED),
       seed=st.integers(0, 2**32 - 1))
def test_quantized_blocks_bound_the_error(rows, cols, fmt, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 5)).astype(np.float32)
    w[rng.random(w.shape) < 0.05] = 0
    q, scales = quantize(w, fmt)
    blocks = -(-rows // QUANT_BLOCK)
    assert q.shape == w.shape and q.dtype == np.int8 and scales.shape == (blocks, cols)
    assert scales.dtype == np.float16
    step = np.repeat(np.abs(scales.astype(np.float32)), QUANT_BLOCK, axis=0)[:rows]
    values = q.astype(np.float32) * np.repeat(scales.astype(np.float32), QUANT_BLOCK, axis=0)[:rows]
    if fmt == "int8":
        # Half a step, plus float32 rounding: q·scale is rounded to the nearest float32, and
        # w / scale, rounded too, can land a value a hair past the midpoint on either side. The
        # float16 step is max|w| / 127 rounded, so max|w| / step ≤ 127·(1 + 2^-11) rounds to 127.
        bound = step / 2 * (1 + 1e-6) + 2 * np.spacing(np.abs(w))
        assert np.all(np.abs(values - w) <= bound)
    lo, hi = Q_RANGE[fmt]
    if fmt != "int8":
        # Half a step, or clipped beyond hi steps (a chosen step may clip the largest values)...
        bound = step / 2 * (1 + 1e-6) + np.maximum(0, np.abs(w) - hi * step) + 2 * np.spacing(np.abs(w))
        assert np.all(np.abs(values - w) <= bound)
        # ... and per block no more squared error than llama.cpp's q4_0 rule (max → lo).
        padded = np.zeros((blocks * QUANT_BLOCK, cols), np.float32)
        padded[:rows] = w
        b = padded.reshape(blocks, QUANT_BLOCK, cols)
        largest = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None, :], axis=1)[:, 0, :]
        d = (largest / lo).astype(np.float16).astype(np.float32)
        q4_0 = np.clip(np.rint(b / np.where(d != 0, d, 1)[:, None, :]), lo, hi) * d[:, None, :]
        ours = np.zeros_like(padded)
        ours[:rows] = values
        err = np.square(ours.reshape(b.shape) - b).sum(axis=1)
        assert np.all(err <= np.square(q4_0 - b).sum(axis=1) * (1 + 1e-5) + 1e-30)
    assert q.min(initial=0) >= lo and q.max(initial=0) <= hi


@pytest.mark.parametrize("fmt", QUANTIZED)
@pytest.mark.parametrize("shape", [(768, 2304), (33, 17), (50, 1)])
@pytest.mark.parametrize("axis", [0, 1])
def test_quantized_layout_round_trips(fmt, shape, axis):
    """The engine's layout (panels of 64 columns, groups of 4 / 8 values, nibbles) holds exactly
    the quantized values: unpack_matrix of pack_matrix equals q·scale computed directly."""
    w = np.random.default_rng(shape[0] + axis).standard_normal(shape).astype(np.float32)
    packed = pack_matrix(w, fmt, reduce_axis=axis)
    view = w if axis == 0 else w.T
    q, scales = quantize(view, fmt)
    expected = q.astype(np.float32) * np.repeat(scales.astype(np.float32), QUANT_BLOCK, axis=0)[:view.shape[0]]
    np.testing.assert_array_equal(unpack_matrix(packed, reduce_axis=axis), expected if axis == 0 else expected.T)
    assert packed["shape"] == shape and packed["data"].dtype == np.uint8


@pytest.mark.parametrize("shape", [(768, 2304), (33, 17), (50, 1), (7, 130)])
@pytest.mark.parametrize("axis", [0, 1])
def test_int6_layout_places_every_value(shape, axis):
    """int6 as csrc/model.hpp describes it: per panel and group of 16 values of d_in, three words
    of four bytes per column; q + 32's low four bits of k % 16 = 4h + i in byte i's low (h even)
    or high (h odd) nibble of word h // 2, its top two bits at bits 2h, 2h + 1 of word 2's byte i."""
    w = np.random.default_rng(shape[0] + axis).standard_normal(shape).astype(np.float32)
    packed = pack_matrix(w, "int6", reduce_axis=axis)
    q, _ = quantize(w if axis == 0 else w.T, "int6")
    d_in, d_out = q.shape
    data = packed["data"]
    groups = -(-d_in // QUANT_BLOCK) * QUANT_BLOCK // 16
    assert data.shape == (-(-d_out // 64), groups, 3 * 64 * 4)
    words = data.reshape(data.shape[0], groups, 3, 64, 4)
    k, j = np.meshgrid(np.arange(d_in), np.arange(d_out), indexing="ij")
    h, i = k % 16 // 4, k % 4
    low = words[j // 64, k // 16, h // 2, j % 64, i] >> (4 * (h % 2)) & 0x0F
    high = words[j // 64, k // 16, 2, j % 64, i] >> (2 * h) & 3
    np.testing.assert_array_equal((low | high << 4).astype(int) - 32, q)


@pytest.mark.parametrize("shape", [(768, 2304), (33, 17), (50, 1), (7, 130)])
@pytest.mark.parametrize("axis", [0, 1])
def test_bf16_layout_places_every_value(shape, axis):
    """bf16 panels: w[k, j] (w seen as [d_in, d_out] reducing over d_in, wte transposed) at
    data[j // 64, k // 2, j % 64, k % 2], zeros elsewhere; unpack_matrix gives back the rounded
    values."""
    w = np.random.default_rng(shape[0] + axis).standard_normal(shape).astype(np.float32)
    packed = pack_matrix(w, "bf16", reduce_axis=axis)
    view = w if axis == 0 else w.T
    d_in, d_out = view.shape
    data = packed["data"]
    assert data.dtype == np.uint16 and data.shape == (-(-d_out // 64), -(-d_in // 2), 64, 2)
    k, j = np.meshgrid(np.arange(d_in), np.arange(d_out), indexing="ij")
    np.testing.assert_array_equal(data[j // 64, k // 2, j % 64, k % 2], float_to_bf16(view))
    assert np.count_nonzero(data) == np.count_nonzero(float_to_bf16(view))
    np.testing.assert_array_equal(unpack_matrix(packed, reduce_axis=axis), bf16_to_float(float_to_bf16(w)))


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_weights_beyond_float16_scales_are_refused(fmt):
    w = np.ones((32, 3), np.float32)
    w[5, 1] = 1e9 if fmt == "int8" else 1e7  # a scale of ~7.9e6, 1.25e6, 3.1e5: beyond float16's 65504
    with pytest.raises(ValueError, match=f"do not fit {fmt}'s float16 block scales"):
        quantize(w, fmt)
    w[5, 1] = np.inf
    with pytest.raises(ValueError, match="float16 block scales"):
        pack_matrix(w, fmt, reduce_axis=0)


def test_int4_scale_is_q4_0s_or_a_finer_one_of_less_error():
    """llama.cpp's q4_0 (ggml-quants.c): d = max / -8 with max the signed value of largest
    magnitude, q = round(x / d) clamped to [-8, 7]; int4 takes it unless a smaller step loses less
    to clipping than it gains elsewhere (squared error). Worked by hand on two blocks."""
    block = np.zeros((32, 2), np.float32)
    block[:4, 0] = [2.0, -1.0, 0.3, 1.9]  # q4_0's step (-0.25) is best: 0.0125 against 0.0164 at 0.95
    block[0, 1], block[1:, 1] = 1.0, 0.11  # 0.95 of q4_0's step: the outlier loses 0.05, the rest fit
    q, scales = quantize(block, "int4")
    assert scales[0, 0] == np.float16(-0.25)
    np.testing.assert_array_equal(q[:4, 0], [-8, 4, -1, -8])  # 0.3 / -0.25 = -1.2; 1.9 → -7.6
    assert scales[0, 1] == np.float16(np.float32(-0.125) * np.float32(0.95))
    np.testing.assert_array_equal(q[:2, 1], [-8, -1])


# The backend fixture holds for every example: suppressing the function-scoped-fixture check is safe.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 12), d_in=st.integers(1, 100), d_out=st.integers(1, 70),
       fmt=st.sampled_from(MATRIX_FORMATS), seed=st.integers(0, 2**32 - 1))
def test_packed_linear_kernel_matches_numpy(n, d_in, d_out, fmt, seed, every_backend):
    """linear on packed weights against x @ unpack(w) + b in float64, with activations spanning
    eleven decades, exact zeros and whole zero blocks (the quantized formats write each block of
    32 activations as a ~22-bit fixed-point integer: error ≤ 2^-19 of the block's largest |x| per
    value on AVX2, 2^-22 on AVX-512); every row alone equals the same row in the batch."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d_in)) * 10.0 ** rng.uniform(-8, 3, (n, d_in))).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0
    x[:, 32:64] *= rng.random() < 0.3  # sometimes a whole zero block
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    lin = {"w": pack_matrix(w, fmt, reduce_axis=0), "b": rng.standard_normal(d_out).astype(np.float32)}
    got = _testing.packed_linear(x, lin, d_out)
    values = unpack_matrix(lin["w"], reduce_axis=0).astype(np.float64)
    want = x.astype(np.float64) @ values + lin["b"]
    padded = np.zeros((n, -(-d_in // QUANT_BLOCK) * QUANT_BLOCK))
    padded[:, :d_in] = np.abs(x)
    block_max = np.repeat(padded.reshape(n, -1, QUANT_BLOCK).max(axis=2), QUANT_BLOCK, axis=1)[:, :d_in]
    bound = 2.0**-18 * (block_max @ np.abs(values)) + 1e-5 * (np.abs(x) @ np.abs(values) + np.abs(lin["b"]))
    assert np.all(np.abs(got - want) <= bound + 1e-30)
    for r in {0, n // 2, n - 1}:
        np.testing.assert_array_equal(_testing.packed_linear(x[r:r + 1].copy(), lin, d_out)[0], got[r])


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_a_nan_weight_makes_its_column_nan(fmt):
    """As in the float32 product, a NaN weight reaches its column's outputs (its whole block
    stands for NaN: the block's scale is NaN); the other columns are untouched."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((80, 40)).astype(np.float32)
    w[37, 5] = np.nan
    with np.errstate(all="raise"):  # and no warning on the way
        lin = {"w": pack_matrix(w, fmt, reduce_axis=0), "b": np.zeros(40, np.float32)}
    values = unpack_matrix(lin["w"], reduce_axis=0)
    assert np.isnan(values[32:64, 5]).all() and not np.isnan(np.delete(values, 5, axis=1)).any()
    out = _testing.packed_linear(rng.standard_normal((2, 80)).astype(np.float32), lin, 40)
    assert np.isnan(out[:, 5]).all() and np.isfinite(np.delete(out, 5, axis=1)).all()


@pytest.mark.parametrize("fmt", MATRIX_FORMATS)
def test_packed_linear_propagates_nan_and_inf(fmt):
    """A non-finite activation makes its row's outputs NaN (or ±inf) as the float32 product does,
    never a finite number: the quantized kernels cannot write inf or NaN as an integer."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((80, 40)).astype(np.float32)
    lin = {"w": pack_matrix(w, fmt, reduce_axis=0), "b": np.zeros(40, np.float32)}
    x = rng.standard_normal((3, 80)).astype(np.float32)
    x[0, 5], x[1, 70] = np.nan, np.inf
    out = _testing.packed_linear(x, lin, 40)
    assert not np.isfinite(out[0]).any() and not np.isfinite(out[1]).any()
    assert np.isfinite(out[2]).all()


@pytest.mark.parametrize("fmt", MATRIX_FORMATS)
def test_packed_linear_takes_activations_near_float32s_largest(fmt, every_backend):
    """Blocks of activations whose sum overflows float32 are still finite numbers: each is
    written against its block's largest |x|, whatever the block's sum."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((80, 8)) * 1e-3).astype(np.float32)
    lin = {"w": pack_matrix(w, fmt, reduce_axis=0), "b": np.zeros(8, np.float32)}
    x = rng.uniform(1e37, 3e37, (2, 80)).astype(np.float32)
    x[1, ::2] *= -1
    assert np.isinf(x[0, :32].sum(dtype=np.float32))
    got = _testing.packed_linear(x, lin, 8)
    values = unpack_matrix(lin["w"], reduce_axis=0).astype(np.float64)
    want = x.astype(np.float64) @ values
    assert np.all(np.abs(got - want) <= 2.0**-18 * (np.abs(x) @ np.abs(values)))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("config", [(1, 32, 4, 101), (2, 48, 3, 257), (3, 64, 8, 1000), (2, 40, 5, 77)])
def test_packed_engine_matches_reference_on_the_unpacked_values(fmt, config, every_backend):
    n_layer, n_embd, n_head, n_vocab = config
    rng = np.random.default_rng(sum(config))
    params = random_params(rng, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_vocab=n_vocab, n_ctx=64)
    packed = pack_params(params, fmt)
    ids = rng.integers(0, n_vocab, 40)
    expected = reference.gpt2(ids, **unpack_params(packed), n_head=n_head)
    logits = gpt2gen.forward(ids, packed, n_head)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    greedy = gpt2gen.generate(ids[:5], packed, n_head, 40)
    assert greedy == reference.generate(list(ids[:5]), unpack_params(packed), n_head, 40)


# (n_embd, n_head, n_vocab): GPT-2-like widths, widths whose matrices end in partial vectors
# and partial quantization blocks (40 → blocks of 32 + 8; 3·40 = 120 columns = 7·16 + 8, a panel of
# 64 and one of 56), and one
# wide enough for threads to split matrices of several 128-row segments (192 → 2, 768 → 6).
@pytest.mark.parametrize("shape", [(64, 4, 500), (40, 5, 77), (72, 6, 131), (192, 4, 300)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_batches_threads_and_cache_are_bit_identical(fmt, shape, every_backend):
    n_embd, n_head, n_vocab = shape
    params = pack_params(random_params(np.random.default_rng(5), n_layer=2, n_embd=n_embd,
                                       n_head=n_head, n_vocab=n_vocab, n_ctx=64), fmt)
    model = _core.Model(params, 4)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    together = engine_requests.run(model, prompts, 10, logprobs=20)
    alone = [engine_requests.run(model, [p], 10, logprobs=20)[0] for p in prompts]
    assert together == alone
    sequence = prompts[2] + together[2][0]
    cached = _testing.cached_decode_logits(model, prompts[2], 10, chunk_rows=2)
    np.testing.assert_array_equal(model.forward(sequence[:-1])[-1], cached[-1])
    before = gpt2gen.num_threads()
    try:
        gpt2gen.set_num_threads(1)
        one = model.forward(sequence)
        for threads in (2, 3):
            gpt2gen.set_num_threads(threads)
            np.testing.assert_array_equal(model.forward(sequence), one)
    finally:
        gpt2gen.set_num_threads(before)


@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_arrays_are_read_in_place(fmt):
    packed = pack_params(random_params(np.random.default_rng(6), n_layer=1), fmt)
    addresses = _core.Model(packed, 4).addresses()
    assert addresses == {path: arr.__array_interface__["data"][0]
                         for path, arr in leaves(packed) if isinstance(arr, np.ndarray)}
    assert addresses["wte.data"] == packed["wte"]["data"].__array_interface__["data"][0]


def test_pack_params_shares_what_it_does_not_pack():
    params = random_params(np.random.default_rng(7), n_layer=1)
    packed = pack_params(params, "int8")
    assert packed["wpe"] is params["wpe"] and packed["ln_f"] is params["ln_f"]
    assert packed["blocks"][0]["attn"]["c_attn"]["b"] is params["blocks"][0]["attn"]["c_attn"]["b"]
    assert isinstance(params["wte"], np.ndarray)  # the input is not modified


def test_bad_packed_parameters():
    params = random_params(np.random.default_rng(8), n_layer=1, n_embd=32, n_head=4)
    with pytest.raises(ValueError, match="dtype must be one of bf16, int8, int4"):
        pack_params(params, "int2")
    with pytest.raises(TypeError, match="float32"):
        pack_params(random_params(np.random.default_rng(8), dtype=np.float64), "bf16")
    packed = pack_params(params, "int8")
    packed["blocks"][0]["mlp"]["c_fc"]["w"]["format"] = "int2"
    with pytest.raises(ValueError, match=r"'blocks\[0\]\.mlp\.c_fc\.w\.format' is 'int2'"):
        gpt2gen.forward([1], packed, 4)
    packed = pack_params(params, "int8")
    packed["blocks"][0]["attn"]["c_proj"]["w"]["scales"] = np.ones((1, 1, 64), np.float64)
    with pytest.raises(TypeError, match=r"'blocks\[0\]\.attn\.c_proj\.w\.scales' has dtype float64"):
        gpt2gen.forward([1], packed, 4)
    packed = pack_params(params, "int4")  # float16 scales: float32 ones are refused, not misread
    packed["blocks"][0]["attn"]["c_proj"]["w"]["scales"] = np.ones((1, 1, 64), np.float32)
    with pytest.raises(TypeError, match=r"c_proj\.w\.scales' has dtype float32 but .* float16"):
        gpt2gen.forward([1], packed, 4)
    packed = pack_params(params, "int8")
    packed["wte"]["scales"] = packed["wte"]["scales"][:, :0].copy()
    with pytest.raises(ValueError, match=r"'wte\.scales' has shape \(2, 0, 64\), expected \(2, 1, 64\)"):
        gpt2gen.forward([1], packed, 4)
    packed = pack_params(params, "int4")
    packed["blocks"][0]["mlp"]["c_fc"]["w"]["shape"] = (32, 100)
    with pytest.raises(ValueError, match=r"c_fc\.w\.shape' is \(32, 100\), expected \(32, 128\)"):
        gpt2gen.forward([1], packed, 4)
    packed = pack_params(params, "int4")
    for shape, error in [("wide", TypeError), ((32, 128.0), TypeError), ((True, 128), TypeError),
                         ((32,), TypeError), ((2**70, 128), ValueError), ((0, 128), ValueError)]:
        packed["blocks"][0]["mlp"]["c_fc"]["w"]["shape"] = shape
        with pytest.raises(error, match=r"c_fc\.w\.shape' must be a pair of ints"):
            gpt2gen.forward([1], packed, 4)
    packed = pack_params(params, "bf16")
    packed["blocks"][0]["attn"]["c_attn"]["w"]["data"] = packed["blocks"][0]["attn"]["c_attn"]["w"]["data"].view(np.int16)
    with pytest.raises(TypeError, match="whose data is uint16"):
        gpt2gen.forward([1], packed, 4)
    mixed = pack_params(params, "bf16")
    mixed["wpe"] = mixed["wpe"].astype(np.float64)
    with pytest.raises(TypeError, match="'wpe' has dtype float64"):
        gpt2gen.forward([1], mixed, 4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_pretrained_packs(fmt, numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=2, n_embd=32, n_head=4, vocab_size=300, n_positions=50)
    _, hparams, packed = gpt2gen.load_pretrained(model_dir, dtype=fmt)
    assert packed["wte"]["format"] == ("int6" if fmt == "int4" else fmt)  # int4 keeps wte in int6
    model = gpt2gen.GPT2.from_pretrained(model_dir, dtype=fmt)
    ids = model.encode("hello there")
    expected = reference.gpt2(np.array(ids), **unpack_params(packed), n_head=4)
    np.testing.assert_allclose(model.engine.forward(ids), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
