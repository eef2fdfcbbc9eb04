"""Zero-copy: the engine reads the caller's parameter arrays in place."""

import mmap

import numpy as np
import pytest

import gpt2gen
from gpt2gen import _core
from random_models import leaves, random_params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_engine_reads_the_callers_buffers(dtype):
    params = random_params(np.random.default_rng(0), n_layer=3, dtype=dtype)
    model = _core.Model(params, 4)
    addresses = model.addresses()
    expected = {path: arr.__array_interface__["data"][0] for path, arr in leaves(params)}
    assert addresses == expected
    assert model.dtype == np.dtype(dtype).name


def test_writes_to_the_callers_arrays_are_seen():
    params = random_params(np.random.default_rng(1), n_layer=1)
    model = _core.Model(params, 4)
    before = model.forward([1, 2, 3])
    params["ln_f"]["b"] += 1.0  # in place: a copy would not see this
    np.testing.assert_allclose(model.forward([1, 2, 3]), before + params["wte"].sum(axis=1), rtol=1e-4, atol=1e-4)


def test_read_only_memory_mapped_weights(tmp_path):
    params = random_params(np.random.default_rng(2), n_layer=1)
    path = tmp_path / "wte.bin"
    params["wte"].tofile(path)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    expected = gpt2gen.forward([1, 2], params, 4)
    params["wte"] = np.frombuffer(mapping, dtype=np.float32).reshape(params["wte"].shape)
    assert not params["wte"].flags.writeable
    model = _core.Model(params, 4)
    assert model.addresses()["wte"] == params["wte"].__array_interface__["data"][0]
    np.testing.assert_array_equal(model.forward([1, 2]), expected)
    del model, params
    mapping.close()


def test_model_keeps_arrays_alive():
    params = random_params(np.random.default_rng(3), n_layer=1)
    expected = gpt2gen.forward([4, 5], params, 4)
    model = _core.Model(params, 4)
    del params  # the model holds references to every array it reads
    np.testing.assert_array_equal(model.forward([4, 5]), expected)


def test_non_contiguous_or_other_dtypes_are_refused_not_copied():
    params = random_params(np.random.default_rng(4), n_layer=1)
    params["blocks"][0]["attn"]["c_proj"]["w"] = np.asfortranarray(params["blocks"][0]["attn"]["c_proj"]["w"])
    with pytest.raises(TypeError, match=r"blocks\[0\]\.attn\.c_proj\.w.*C-contiguous"):
        _core.Model(params, 4)
    half = random_params(np.random.default_rng(4), n_layer=1, dtype=np.float16)
    with pytest.raises(TypeError, match="float16"):
        _core.Model(half, 4)
