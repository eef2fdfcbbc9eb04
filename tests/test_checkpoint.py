"""gpt2gen.checkpoint: loading Hugging Face GPT-2 checkpoints into picoGPT's params.

Parity with transformers needs torch + transformers (those tests skip without them); the file
format, mapping and error tests only need NumPy. No test touches the network: every test runs
with huggingface_hub in offline mode.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    make_numpy_gpt2,
    read_safetensors_raw,
    save_safetensors,
    to_bf16_bits,
    write_safetensors_raw,
)
from gpt2gen import reference
from gpt2gen.checkpoint import (
    MODEL_FILES,
    CheckpointDownloadError,
    CheckpointError,
    SafetensorsFile,
    checkpoint_to_params,
    expected_tensors,
    load_checkpoint,
    load_hparams,
    load_pretrained,
)
from random_models import leaves

# n_layer 0..3, n_embd 32/48/64 with n_head 2..8, vocab and context not powers of two.
CONFIGS = [
    dict(n_layer=0, n_embd=32, n_head=2, vocab_size=301, n_positions=50),
    dict(n_layer=1, n_embd=48, n_head=6, vocab_size=97, n_positions=77),
    dict(n_layer=2, n_embd=64, n_head=8, vocab_size=301, n_positions=77),
    dict(n_layer=3, n_embd=48, n_head=3, vocab_size=263, n_positions=50),
    dict(n_layer=3, n_embd=64, n_head=4, vocab_size=97, n_positions=77, seed=7),
]
CONFIG_IDS = ["L{n_layer}-E{n_embd}-H{n_head}-V{vocab_size}-C{n_positions}".format(**c) for c in CONFIGS]


def _engine():
    """``(forward, generate)`` of the compiled engine, or None when it is not built."""
    try:
        import gpt2gen

        return gpt2gen.forward, gpt2gen.generate
    except (ImportError, AttributeError):
        return None


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network in any test: huggingface_hub offline, with an empty private cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    try:
        import huggingface_hub.constants as constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The models here are tiny: torch's thread pool only costs time on a busy machine."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mapping_of(arr):
    """The mmap.mmap an array views (following .base), or None."""
    obj = arr
    while obj is not None:
        if isinstance(obj, mmap.mmap):
            return obj
        if isinstance(obj, memoryview):
            obj = obj.obj
        else:
            obj = getattr(obj, "base", None)
    return None


# --------------------------------------------------------------------------------------------
# parity with transformers


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_logits_match_transformers(random_gpt2, config):
    torch = pytest.importorskip("torch")
    model_dir, model = random_gpt2(**config)
    hparams, params = load_checkpoint(model_dir)
    assert hparams == {
        "n_vocab": config["vocab_size"], "n_ctx": config["n_positions"], "n_embd": config["n_embd"],
        "n_head": config["n_head"], "n_layer": config["n_layer"],
    }
    ids = np.random.default_rng(1).integers(0, hparams["n_vocab"], hparams["n_ctx"])  # the full context
    with torch.no_grad():
        expected = model(torch.tensor(ids)[None]).logits[0].numpy()

    logits = reference.gpt2(ids, **params, n_head=hparams["n_head"])
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    engine = _engine()
    if engine is not None:
        np.testing.assert_allclose(engine[0](ids, params, hparams["n_head"]), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_greedy_generation_matches_transformers(random_gpt2, config):
    torch = pytest.importorskip("torch")
    model_dir, model = random_gpt2(**config)
    hparams, params = load_checkpoint(model_dir)
    prompt = [int(i) for i in np.random.default_rng(2).integers(0, hparams["n_vocab"], 8)]
    n_new = min(64, hparams["n_ctx"] - len(prompt))  # n_positions 50 cannot hold 8 + 64 tokens
    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        # transformers 5: eos_token_id=None as a generate() keyword disables the EOS stop (a
        # GenerationConfig(eos_token_id=None) does not: the model's eos is merged back), and
        # min_new_tokens must NOT be used: it masks the EOS logit, which is not plain greedy.
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
            max_new_tokens=n_new, eos_token_id=None, pad_token_id=hparams["n_vocab"] - 1,
        )
    expected = out[0, len(prompt):].tolist()
    assert len(expected) == n_new

    assert reference.generate(prompt, params, hparams["n_head"], n_new) == expected
    engine = _engine()
    if engine is None:
        pytest.skip("the compiled engine (gpt2gen.generate) is not built; the reference matched")
    assert engine[1](prompt, params, hparams["n_head"], n_new) == expected


def test_load_pretrained_returns_encoder(random_gpt2):
    pytest.importorskip("gpt2gen.tokenizer", reason="gpt2gen.tokenizer is not written yet")
    transformers = pytest.importorskip("transformers")
    model_dir, _ = random_gpt2(**CONFIGS[2])
    encoder, hparams, params = load_pretrained(model_dir)
    assert set(hparams) == {"n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"}
    text = "the other hat is there, he said\n  ok <|endoftext|>"
    ids = encoder.encode(text)
    assert max(ids) < hparams["n_vocab"]
    assert encoder.decode(ids) == text
    hf_tokenizer = transformers.GPT2Tokenizer.from_pretrained(model_dir)
    assert ids == hf_tokenizer(text)["input_ids"]  # the test vocabulary is valid for transformers


def test_pickle_checkpoint_refused_unless_allowed(random_gpt2, tmp_path):
    torch = pytest.importorskip("torch")
    model_dir, model = random_gpt2(**CONFIGS[1])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        (pickled / name).write_bytes((model_dir / name).read_bytes())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # tied: lm_head.weight is wte

    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin") as info:
        load_checkpoint(pickled)
    message = str(info.value)
    assert "arbitrary code" in message and "allow_pickle=True" in message and "safetensors" in message

    hparams, params = load_checkpoint(pickled, allow_pickle=True)
    _, expected = load_checkpoint(model_dir)
    for (path, arr), (_, want) in zip(leaves(params), leaves(expected)):
        np.testing.assert_array_equal(arr, want, err_msg=path)


# --------------------------------------------------------------------------------------------
# names and mapping


def test_numpy_checkpoint_maps_every_name(numpy_gpt2):
    model_dir, tensors = numpy_gpt2(n_layer=3, n_embd=32, n_head=4, vocab_size=97, n_positions=50)
    hparams, params = load_checkpoint(model_dir)
    expected = list(expected_tensors(hparams))
    assert len(list(leaves(params))) == len(expected) == 4 + 12 * 3
    for name, path, shape in expected:
        node = params
        for key in path:
            node = node[key]
        assert node.shape == shape and node.dtype == np.float32 and node.flags.c_contiguous
        np.testing.assert_array_equal(node, tensors[name], err_msg=name)


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_both_name_styles_load_the_same(tmp_path, prefix):
    plain_dir, _ = make_numpy_gpt2(tmp_path, n_layer=2, name="plain")
    styled_dir, _ = make_numpy_gpt2(tmp_path, n_layer=2, prefix=prefix, name="styled")
    (_, a), (_, b) = load_checkpoint(plain_dir), load_checkpoint(styled_dir)
    for (path, x), (_, y) in zip(leaves(a), leaves(b)):
        np.testing.assert_array_equal(x, y, err_msg=path)


def test_f32_weights_are_views_of_one_file_mapping(numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=2)
    _, params = load_checkpoint(model_dir)
    mappings = {id(_mapping_of(arr)) for _, arr in leaves(params)}
    maps = [_mapping_of(arr) for _, arr in leaves(params)]
    assert all(m is not None for m in maps) and len(mappings) == 1
    whole_file = np.frombuffer(maps[0], dtype=np.uint8)
    for path, arr in leaves(params):
        assert np.shares_memory(arr, whole_file), path
        assert not arr.flags.writeable and arr.flags.aligned and arr.flags.c_contiguous, path


_RSS_PROBE = r"""
import json, sys
from pathlib import Path
import numpy as np
from gpt2gen.checkpoint import load_checkpoint

def kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

def leaves(p):
    if isinstance(p, dict):
        for v in p.values(): yield from leaves(v)
    elif isinstance(p, list):
        for v in p: yield from leaves(v)
    else:
        yield p

out = {"before": (kb("RssAnon"), kb("RssFile"))}
hparams, params = load_checkpoint(sys.argv[1])
out["loaded"] = (kb("RssAnon"), kb("RssFile"))
out["sum"] = sum(float(a.sum(dtype=np.float64)) for a in leaves(params))  # touch every page
out["touched"] = (kb("RssAnon"), kb("RssFile"))
copies = [np.array(a) for a in leaves(params)]
out["copied"] = (kb("RssAnon"), kb("RssFile"))
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc/self/status")
def test_loading_maps_rather_than_copies(numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=2, n_embd=512, n_head=8, vocab_size=12001, n_positions=301, with_buffers=False)
    file_kb = (model_dir / "model.safetensors").stat().st_size // 1024
    assert file_kb > 40_000
    # A fresh interpreter: memory freed by earlier tests (and kept by malloc) cannot hide copies.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    run = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(model_dir)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    m = json.loads(run.stdout.strip().splitlines()[-1])
    (anon0, file0), (anon1, file1), (anon2, file2), (anon3, _) = m["before"], m["loaded"], m["touched"], m["copied"]
    assert math.isfinite(m["sum"])
    # Loading reads nothing; touching maps the file's pages (shared with the page cache) and
    # allocates no private copy of them.
    assert anon1 - anon0 < file_kb // 10 and file1 - file0 < file_kb // 10, m
    assert anon2 - anon0 < file_kb // 10, m
    assert file2 - file0 > file_kb * 3 // 4, m
    # The same measure sees copies: reading every weight into memory grows RssAnon by the file.
    assert anon3 - anon2 > file_kb * 3 // 4, m


def test_half_bf16_and_double_are_converted_to_float32(tmp_path):
    model_dir, tensors = make_numpy_gpt2(tmp_path, n_layer=1, with_buffers=False)
    stored = dict(tensors)
    stored["wte.weight"] = tensors["wte.weight"].astype(np.float16)
    stored["wpe.weight"] = ("BF16", to_bf16_bits(tensors["wpe.weight"]))
    stored["h.0.mlp.c_fc.weight"] = tensors["h.0.mlp.c_fc.weight"].astype(np.float64)
    save_safetensors(model_dir / "model.safetensors", stored)
    _, params = load_checkpoint(model_dir)
    assert all(arr.dtype == np.float32 for _, arr in leaves(params))
    np.testing.assert_array_equal(params["wte"], tensors["wte.weight"].astype(np.float16).astype(np.float32))
    bf16 = (to_bf16_bits(tensors["wpe.weight"]).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(params["wpe"], bf16)
    np.testing.assert_allclose(params["wpe"], tensors["wpe.weight"], rtol=1e-2)
    np.testing.assert_array_equal(params["blocks"][0]["mlp"]["c_fc"]["w"], tensors["h.0.mlp.c_fc.weight"])
    assert _mapping_of(params["wte"]) is None  # converted: a copy
    assert _mapping_of(params["blocks"][0]["attn"]["c_attn"]["w"]) is not None  # F32: still a view


def test_float64_params_on_request(numpy_gpt2):
    model_dir, tensors = numpy_gpt2(n_layer=1)
    _, params = load_checkpoint(model_dir, dtype=np.float64)
    assert all(arr.dtype == np.float64 for _, arr in leaves(params))
    np.testing.assert_array_equal(params["wte"], tensors["wte.weight"])


def test_sharded_safetensors(tmp_path):
    model_dir, tensors = make_numpy_gpt2(tmp_path, n_layer=2)
    (model_dir / "model.safetensors").unlink()
    names = list(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    weight_map = {}
    for filename, shard_names in shards.items():
        save_safetensors(model_dir / filename, {n: tensors[n] for n in shard_names})
        weight_map.update({n: filename for n in shard_names})
    index = model_dir / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _, params = load_checkpoint(model_dir)
    np.testing.assert_array_equal(params["ln_f"]["b"], tensors["ln_f.bias"])
    assert _mapping_of(params["wte"]) is not None

    other = {a: b for a, b in zip(shards, reversed(list(shards)))}
    weight_map["wte.weight"] = other[weight_map["wte.weight"]]  # the index points to the wrong shard
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"'wte\.weight' is not in its shard"):
        load_checkpoint(model_dir)


def test_tied_lm_head_is_accepted_untied_refused(tmp_path):
    model_dir, tensors = make_numpy_gpt2(tmp_path, n_layer=1, prefix="transformer.")
    tied = dict(tensors, **{"lm_head.weight": tensors["transformer.wte.weight"].copy()})
    save_safetensors(model_dir / "model.safetensors", tied)
    load_checkpoint(model_dir)

    untied = dict(tied)
    untied["lm_head.weight"] = tied["lm_head.weight"] + np.float32(1e-3)
    save_safetensors(model_dir / "model.safetensors", untied)
    with pytest.raises(CheckpointError, match=r"'lm_head\.weight' differs from 'transformer\.wte\.weight'.*ties"):
        load_checkpoint(model_dir)


def test_untied_config_without_head_refused(tmp_path):
    model_dir, _ = make_numpy_gpt2(tmp_path, n_layer=1, config_overrides={"tie_word_embeddings": False})
    with pytest.raises(CheckpointError, match=r"tie_word_embeddings=false.*no lm_head\.weight"):
        load_checkpoint(model_dir)


def test_both_prefixed_and_plain_name_refused(tmp_path):
    model_dir, tensors = make_numpy_gpt2(tmp_path, n_layer=1)
    save_safetensors(model_dir / "model.safetensors", dict(tensors, **{"transformer.wte.weight": tensors["wte.weight"]}))
    with pytest.raises(CheckpointError, match=r"both 'wte\.weight' and 'transformer\.wte\.weight'"):
        load_checkpoint(model_dir)


def test_checkpoint_to_params_accepts_any_mapping():
    from conftest import numpy_gpt2_tensors

    tensors = numpy_gpt2_tensors(n_layer=1, n_embd=16, n_head=2, vocab_size=11, n_positions=5)
    hparams = {"n_vocab": 11, "n_ctx": 5, "n_embd": 16, "n_head": 2, "n_layer": 1}
    params = checkpoint_to_params(tensors, hparams)
    assert params["blocks"][0]["mlp"]["c_proj"]["w"] is tensors["h.0.mlp.c_proj.weight"]  # no copy
    logits = reference.gpt2([1, 2, 3], **params, n_head=2)
    assert logits.shape == (3, 11)


# --------------------------------------------------------------------------------------------
# missing, mis-shaped and unexpected tensors


def test_missing_tensor_is_named(numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=2, n_embd=32, prefix="transformer.")
    path = model_dir / "model.safetensors"
    header, data = read_safetensors_raw(path)
    del header["transformer.h.1.mlp.c_fc.weight"]
    write_safetensors_raw(path, header, data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model_dir)
    message = str(info.value)
    assert str(path) in message and "missing tensor" in message
    assert "'transformer.h.1.mlp.c_fc.weight'" in message and "blocks[1].mlp.c_fc.w" in message
    assert "[32, 128]" in message


def test_misshaped_tensor_is_named(numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=2, n_embd=32)
    path = model_dir / "model.safetensors"
    header, data = read_safetensors_raw(path)
    header["h.0.attn.c_attn.weight"]["shape"] = [96, 32]  # same bytes, transposed shape
    write_safetensors_raw(path, header, data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model_dir)
    message = str(info.value)
    assert "'h.0.attn.c_attn.weight'" in message and "blocks[0].attn.c_attn.w" in message
    assert "has shape [96, 32], expected [32, 96]" in message


def test_config_with_more_layers_than_the_checkpoint(numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=2, config_overrides={"n_layer": 4})
    with pytest.raises(CheckpointError, match=r"missing tensors 'h\.2\.ln_1\.weight' \(params blocks\[2\]\.ln_1\.g"):
        load_checkpoint(model_dir)


def test_config_with_fewer_layers_than_the_checkpoint(numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=2, config_overrides={"n_layer": 1})
    with pytest.raises(CheckpointError, match=r"unexpected tensors 'h\.1\..*n_layer=1"):
        load_checkpoint(model_dir)


def test_config_vocab_mismatch(numpy_gpt2):
    model_dir, _ = numpy_gpt2(vocab_size=97, config_overrides={"vocab_size": 100})
    with pytest.raises(CheckpointError, match=r"'wte\.weight' \(params wte\) has shape \[97, 32\], expected \[100, 32\]"):
        load_checkpoint(model_dir)


def test_integer_weight_refused(numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=1)
    path = model_dir / "model.safetensors"
    header, data = read_safetensors_raw(path)
    header["ln_f.bias"]["dtype"] = "I32"  # same size as F32
    write_safetensors_raw(path, header, data)
    with pytest.raises(CheckpointError, match=r"tensor 'ln_f\.bias' has dtype I32; weights must be"):
        load_checkpoint(model_dir)


# --------------------------------------------------------------------------------------------
# malformed safetensors files


def _damage(model_dir, edit_header=None, *, data_edit=None, header_len=None):
    path = model_dir / "model.safetensors"
    header, data = read_safetensors_raw(path)
    if edit_header is not None:
        edit_header(header)
    if data_edit is not None:
        data = data_edit(data)
    write_safetensors_raw(path, header, data, header_len=header_len)
    return path


def _set(name, **fields):
    def edit(header):
        header[name].update(fields)

    return edit


@pytest.fixture
def valid_dir(numpy_gpt2):
    model_dir, _ = numpy_gpt2(n_layer=1, n_embd=32, vocab_size=97, n_positions=50)
    return model_dir


def _expect(model_dir, pattern, *, tensor=None):
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(model_dir)
    message = str(info.value)
    assert str(model_dir / "model.safetensors") in message
    if tensor is not None:
        assert repr(tensor) in message
    return message


def test_truncated_file(valid_dir):
    path = valid_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _expect(valid_dir, r"reach beyond the end of the file.*truncated", tensor="ln_f.bias")  # the last one


def test_truncated_inside_the_header(valid_dir):
    path = valid_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    _expect(valid_dir, r"header length field says \d+ bytes but the file has only 32 bytes")


def test_shorter_than_the_length_field(valid_dir):
    (valid_dir / "model.safetensors").write_bytes(b"\x10\x00\x00")
    _expect(valid_dir, r"truncated: 3 bytes")


def test_header_length_beyond_the_file(valid_dir):
    size = (valid_dir / "model.safetensors").stat().st_size
    _damage(valid_dir, header_len=size)
    _expect(valid_dir, rf"header length field says {size} bytes but the file has only {size - 8} bytes")


def test_absurd_header_length(valid_dir):
    _damage(valid_dir, header_len=2**63 + 5)
    _expect(valid_dir, r"header length field says \d+ bytes, more than the \d+-byte limit")


def test_header_not_json(valid_dir):
    path = valid_dir / "model.safetensors"
    blob = bytearray(path.read_bytes())
    blob[8:20] = b"{not json!!!"
    path.write_bytes(bytes(blob))
    _expect(valid_dir, r"header .* is not valid UTF-8 JSON")


def test_header_not_utf8(valid_dir):
    path = valid_dir / "model.safetensors"
    blob = bytearray(path.read_bytes())
    blob[9:11] = b"\xff\xfe"
    path.write_bytes(bytes(blob))
    _expect(valid_dir, r"not valid UTF-8 JSON")


def test_header_not_an_object(valid_dir):
    _, data = read_safetensors_raw(valid_dir / "model.safetensors")
    write_safetensors_raw(valid_dir / "model.safetensors", [], data)
    _expect(valid_dir, r"must be a JSON object, got list")


def test_duplicate_tensor_name(valid_dir):
    path = valid_dir / "model.safetensors"
    header, data = read_safetensors_raw(path)
    text = json.dumps(header)
    entry = json.dumps(header["ln_f.bias"])
    text = text[:-1] + f', "ln_f.bias": {entry}}}'
    raw = text.encode() + b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    _expect(valid_dir, r"lists 'ln_f\.bias' twice")


def test_offsets_beyond_the_file(valid_dir):
    header, data = read_safetensors_raw(valid_dir / "model.safetensors")
    begin = header["wpe.weight"]["data_offsets"][0]
    rows = len(data)  # a shape whose byte size matches offsets that run past the end
    _damage(valid_dir, _set("wpe.weight", shape=[rows, 32], data_offsets=[begin, begin + rows * 32 * 4]))
    _expect(valid_dir, r"reach beyond the end of the file", tensor="wpe.weight")


def test_huge_offsets(valid_dir):
    _damage(valid_dir, _set("ln_f.weight", shape=[2**61], data_offsets=[0, 2**63]))
    _expect(valid_dir, r"data_offsets \[0, 9223372036854775808\] reach beyond the end", tensor="ln_f.weight")


def test_huge_declared_shape_is_never_allocated(valid_dir):
    header, _ = read_safetensors_raw(valid_dir / "model.safetensors")
    offsets = header["wte.weight"]["data_offsets"]
    _damage(valid_dir, _set("wte.weight", shape=[2**40, 2**40, 2**40]))
    _expect(valid_dir, rf"dtype F32 with shape \[{2**40}, {2**40}, {2**40}\] needs {2**122} bytes, but "
            rf"data_offsets \[{offsets[0]}, {offsets[1]}\] hold", tensor="wte.weight")


def test_dtype_shape_lie(valid_dir):
    _damage(valid_dir, _set("wte.weight", dtype="F16"))
    _expect(valid_dir, r"dtype F16 with shape \[97, 32\] needs 6208 bytes, but data_offsets \[\d+, \d+\] hold 12416",
            tensor="wte.weight")


def test_unknown_dtype(valid_dir):
    _damage(valid_dir, _set("h.0.ln_1.bias", dtype="F33"))
    _expect(valid_dir, r"unknown dtype 'F33'", tensor="h.0.ln_1.bias")


def test_overlapping_tensors(valid_dir):
    header, _ = read_safetensors_raw(valid_dir / "model.safetensors")
    _damage(valid_dir, _set("ln_f.bias", data_offsets=header["ln_f.weight"]["data_offsets"]))
    _expect(valid_dir, r"tensors 'ln_f\.(bias|weight)' .* and 'ln_f\.(bias|weight)' .* overlap")


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"shape": [-1, 32]}, r"shape must be a list of non-negative integers"),
        ({"shape": "32"}, r"shape must be a list"),
        ({"data_offsets": [100, 10]}, r"data_offsets must be \[begin, end\] with 0 <= begin <= end"),
        ({"data_offsets": [0]}, r"data_offsets must be"),
        ({"extra": 1}, r"expected exactly the keys dtype, shape, data_offsets"),
    ],
    ids=["negative-dim", "shape-string", "begin-after-end", "one-offset", "extra-key"],
)
def test_malformed_entries(valid_dir, fields, pattern):
    _damage(valid_dir, _set("wpe.weight", **fields))
    _expect(valid_dir, pattern, tensor="wpe.weight")


def test_bad_metadata(valid_dir):
    _damage(valid_dir, lambda h: h.update({"__metadata__": {"format": 1}}))
    _expect(valid_dir, r"'__metadata__' must be an object of string values")


def test_safetensors_file_reads_metadata_and_entries(valid_dir):
    f = SafetensorsFile(valid_dir / "model.safetensors")
    assert f.metadata == {"format": "pt"}
    assert f.shape_of("wte.weight") == (97, 32) and f.dtype_of("wte.weight") == "F32"
    assert "h.0.attn.bias" in f and len(f) == 4 + 12 + 1


# --------------------------------------------------------------------------------------------
# directories, config and downloads


def test_pickle_only_directory_refused_without_torch_use(tmp_path):
    model_dir, _ = make_numpy_gpt2(tmp_path)
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"not even a pickle")  # never opened
    with pytest.raises(CheckpointError, match=r"only a pickled PyTorch checkpoint \(pytorch_model\.bin\).*allow_pickle=True"):
        load_pretrained(model_dir)


def test_no_weights(tmp_path):
    model_dir, _ = make_numpy_gpt2(tmp_path)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights found: expected model\.safetensors"):
        load_checkpoint(model_dir)


def test_no_config(tmp_path):
    model_dir, _ = make_numpy_gpt2(tmp_path)
    (model_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_pretrained(model_dir)


def test_missing_tokenizer_file(tmp_path):
    model_dir, _ = make_numpy_gpt2(tmp_path)
    (model_dir / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer file merges\.txt missing"):
        load_pretrained(model_dir)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"activation_function": "relu"}, r"activation_function='relu' is not supported"),
        ({"activation_function": "gelu"}, r"activation_function='gelu' is not supported"),
        ({"layer_norm_epsilon": 1e-6}, r"layer_norm_epsilon=1e-06 is not supported"),
        ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True is not supported"),
        ({"reorder_and_upcast_attn": True}, r"reorder_and_upcast_attn=True is not supported"),
        ({"scale_attn_weights": False}, r"scale_attn_weights=False is not supported"),
        ({"n_inner": 100}, r"n_inner=100 is not supported"),
        ({"model_type": "gpt_neo"}, r"model_type='gpt_neo' is not supported"),
        ({"n_head": 5}, r"n_embd=32 is not a multiple of n_head=5"),
        ({"n_embd": "32"}, r"n_embd='32' must be an integer"),
        ({"vocab_size": None}, r"vocab_size=None must be an integer"),
    ],
)
def test_unsupported_config_values(tmp_path, overrides, pattern):
    model_dir, _ = make_numpy_gpt2(tmp_path, config_overrides=overrides)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_pretrained(model_dir)
    assert str(model_dir / "config.json") in str(info.value)


def test_config_missing_key(tmp_path):
    model_dir, _ = make_numpy_gpt2(tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    del config["n_positions"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing 'n_positions' \(needed for hparams\['n_ctx'\]\)"):
        load_hparams(model_dir)


@pytest.mark.parametrize("name", ["gpt2", "124M"])
def test_offline_download_error_says_what_to_fetch(tmp_path, name):
    pytest.importorskip("huggingface_hub")
    models_dir = tmp_path / "models"
    with pytest.raises(CheckpointDownloadError) as info:
        load_pretrained(name, models_dir=models_dir)
    message = str(info.value)
    assert "'openai-community/gpt2'" in message and "https://huggingface.co/openai-community/gpt2" in message
    assert all(f in message for f in MODEL_FILES)
    assert str(models_dir / "gpt2") in message
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, OSError)


def test_offline_download_error_without_models_dir():
    pytest.importorskip("huggingface_hub")
    with pytest.raises(CheckpointDownloadError, match=r"openai-community/gpt2-xl(.|\n)*model\.safetensors"):
        load_pretrained("1558M")


def test_download_fetches_exactly_the_needed_files_once(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    source, _ = make_numpy_gpt2(tmp_path / "source", n_layer=1)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        target = Path(kwargs["local_dir"])
        target.mkdir(parents=True, exist_ok=True)
        for name in kwargs["allow_patterns"]:
            (target / name).write_bytes((source / name).read_bytes())
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    models_dir = tmp_path / "models"
    hparams, params = load_checkpoint(_resolve("355M", models_dir))
    assert calls == [("openai-community/gpt2-medium",
                      {"allow_patterns": list(MODEL_FILES), "local_dir": str(models_dir / "gpt2-medium")})]
    assert hparams["n_layer"] == 1
    _resolve("gpt2-medium", models_dir)
    assert len(calls) == 1  # already there: no second download


def _resolve(name, models_dir):
    from gpt2gen.checkpoint import resolve_model_dir

    return resolve_model_dir(name, models_dir)


def test_unknown_name(tmp_path):
    with pytest.raises(CheckpointError, match=r"'gpt3' is neither an existing directory nor a known model name"):
        load_pretrained("gpt3", models_dir=tmp_path)


def test_a_model_file_points_to_its_directory(tmp_path):
    model_dir, _ = make_numpy_gpt2(tmp_path)
    with pytest.raises(CheckpointError, match=r"is a file, not a model directory") as info:
        load_pretrained(model_dir / "model.safetensors")
    assert f"pass the directory that holds it ({model_dir})" in str(info.value)


@pytest.mark.parametrize("dtype", ["fp16", "float16", "bfloat16", [1]])
def test_a_bad_dtype_names_the_choices(tmp_path, dtype):
    model_dir, _ = make_numpy_gpt2(tmp_path)
    with pytest.raises(CheckpointError, match=r"dtype must be float32, float64, 'bf16', 'int8' or 'int4'"):
        load_pretrained(model_dir, dtype=dtype)


def test_a_bad_dtype_is_refused_before_any_download(tmp_path):
    with pytest.raises(CheckpointError, match=r"dtype must be .* got 'fp16'") as info:
        load_pretrained("gpt2", models_dir=tmp_path, dtype="fp16")
    assert not isinstance(info.value, CheckpointDownloadError)


def test_pickle_refusal_is_a_typed_error_naming_the_file(tmp_path):
    from gpt2gen.checkpoint import PickleNotAllowedError

    model_dir, _ = make_numpy_gpt2(tmp_path)
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"never opened")
    with pytest.raises(PickleNotAllowedError) as info:
        load_checkpoint(model_dir)
    assert info.value.path == model_dir / "pytorch_model.bin"


@pytest.mark.parametrize("content", [b"", b"\x80\x02"], ids=["empty", "truncated-pickle"])
def test_a_failing_pickle_load_names_its_cause(tmp_path, content):
    pytest.importorskip("torch")
    model_dir, _ = make_numpy_gpt2(tmp_path)
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"torch\.load\(weights_only=True\) failed: \w+") as info:
        load_checkpoint(model_dir, allow_pickle=True)
    cause = str(info.value).split("failed: ", 1)[1]
    assert cause.strip() and (content or "empty or truncated" in cause), cause


def test_download_error_carries_what_a_front_end_needs(tmp_path):
    pytest.importorskip("huggingface_hub")
    import pickle

    with pytest.raises(CheckpointDownloadError) as info:
        load_pretrained("355M", models_dir=tmp_path)
    error = info.value
    assert (error.model_name, error.repo_id) == ("gpt2-medium", "openai-community/gpt2-medium")
    assert error.files == MODEL_FILES and error.target == tmp_path / "gpt2-medium"
    assert error.reason and "\n" not in error.reason
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # crosses process boundaries
