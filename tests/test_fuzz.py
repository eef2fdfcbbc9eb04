"""Fuzzing: the tokenizer, the safetensors loader, and every argument of generate/forward.

Each target has one property: on any input, either the documented result or the documented
exception (with a message), never a crash and never another exception type.

* tokenizer: ``decode(encode(s)) == s`` for every ``str`` without lone surrogates; the incremental
  decoder on any id sequence, cut anywhere, joins to ``decode``; any bytes decode as Python's
  ``bytes.decode("utf-8", "replace")`` does.
* loader: truncated files, wrong header lengths, offsets beyond the file, dtype/shape lies, huge
  declared sizes, byte flips in the header and random JSON are all ``CheckpointError``; a
  subprocess with a capped address space shows that nothing large is allocated on the way.
* generate/forward: random types and values for every argument and malformed params dicts give
  only ``TypeError``/``ValueError``.

Example counts come from a Hypothesis profile: modest by default, so the normal suite stays fast,
and large with ``GPT2GEN_FUZZ=1`` (what ``.ci/fuzz.sh`` runs, with a fixed seed and a time bound).
Run as a script, this file is also a set of atheris (libFuzzer) harnesses:
``python tests/test_fuzz.py {tokenizer,safetensors,generate} [libFuzzer flags]``.

Bugs found here are kept as regression tests at the end of the file, marked
``xfail(strict=True)`` until the engine is fixed: a fix makes them XPASS, which fails the run, and
then the marker goes.
"""

from __future__ import annotations

import codecs
import inspect
import itertools
import json
import numbers
import os
import struct
import subprocess
import sys
import tempfile
import threading
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import gpt2gen
from gpt2gen import _core
from gpt2gen.checkpoint import CheckpointError, load_checkpoint, open_safetensors
from gpt2gen.packing import pack_params
from gpt2gen.tokenizer import EOT, GPT2_SPLIT_PATTERN, Tokenizer, bytes_to_unicode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_numpy_gpt2, save_safetensors, to_bf16_bits, write_tokenizer_files  # noqa: E402
from isolated import run_isolated
from random_models import random_params  # noqa: E402

FUZZ = os.environ.get("GPT2GEN_FUZZ") == "1"
# Set by .ci/sanitize.sh; ASan's shadow memory makes address-space limits meaningless.
SANITIZED = os.environ.get("GPT2GEN_SANITIZED") == "1" or "libasan" in os.environ.get("LD_PRELOAD", "")

_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
settings.register_profile("gpt2gen-quick", deadline=None, max_examples=100, suppress_health_check=_HEALTH)
# The deadline catches inputs that make one call pathologically slow (a denial of service).
settings.register_profile("gpt2gen-fuzz", deadline=10_000, max_examples=20_000, suppress_health_check=_HEALTH,
                          print_blob=True)
PROFILE = settings.get_profile("gpt2gen-fuzz" if FUZZ else "gpt2gen-quick")


# GPT2GEN_FUZZ_SCALE multiplies the large counts (e.g. 10 for a nightly run); at 1 the whole
# large profile takes ~8 minutes on 2 idle cores.
SCALE = float(os.environ.get("GPT2GEN_FUZZ_SCALE", "1"))


def fuzz_settings(quick: int, large: int) -> settings:
    return settings(PROFILE, max_examples=max(1, int(large * SCALE)) if FUZZ else quick)


# =============================================================================================
# known bugs (reported; each has an xfail regression test at the end of this file)


def _overflows_float(value) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    except Exception:
        return False
    return False


def _int_outside(value, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)


FLOAT_ARGS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")






# =============================================================================================
# tokenizer


def _train_bpe(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Merges by pair frequency over the byte-level spelling of GPT-2's words (small, slow, fine)."""
    table = bytes_to_unicode()
    words: dict[tuple[str, ...], int] = {}
    for word in GPT2_SPLIT_PATTERN.findall(text):
        key = tuple(table[b] for b in word.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(n_merges):
        counts: dict[tuple[str, str], int] = {}
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        best = max(sorted(counts), key=counts.__getitem__)
        merges.append(best)
        joined = {}
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            joined[tuple(out)] = joined.get(tuple(out), 0) + n
        words = joined
    return merges


# Text whose merges cross UTF-8 character boundaries (tokens ending inside a character), so the
# incremental decoder has to hold bytes back.
_CORPUS = ("the cat sat on the mat 😀😀 日本語の日本 naïve café über ÿ ∑∫ 𝔘𝔫𝔦 ok'll it's " * 3
           + "emoji 👍🏽👍🏽 \U0001f3f3\ufe0f\u200d\U0001f308 tabs\t\tnew\n\nlines") * 2


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> list[Tokenizer]:
    """Two vocabularies with the full byte alphabet: conftest's files, and one trained here."""
    files_dir = tmp_path_factory.mktemp("fuzz-tokenizer")
    write_tokenizer_files(files_dir, 700)
    from_files = Tokenizer.from_files(files_dir / "vocab.json", files_dir / "merges.txt")
    merges = _train_bpe(_CORPUS, 120)
    tokens = list(bytes_to_unicode().values()) + [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    vocab[EOT] = len(vocab)
    return [from_files, Tokenizer(vocab, merges)]


_FRAGMENTS = [EOT, "<|", "|>", "<|endoftext", " ", "  ", "\t", "\n", "\r\n", "'s", "'LL", "'", "é", "e\u0301",
              "😀", "👍🏽", "日本", "\u200d", "\ufeff", "\x00", "\x85", "\U0010ffff", "\U000323b0"]
_chars = st.characters(exclude_categories=("Cs",))  # any code point but a lone surrogate
texts = st.one_of(
    st.text(_chars),
    st.lists(st.sampled_from(_FRAGMENTS) | st.text(_chars, max_size=3), max_size=25).map("".join),
    st.text(st.characters(min_codepoint=0x80, exclude_categories=("Cs",)), max_size=30),
    st.builds(lambda c, n: c * n, _chars, st.integers(0, 3000)),  # long runs: one long word
)


@fuzz_settings(300, 10_000)
@given(texts, st.integers(0, 1))
def test_tokenizer_round_trip(tokenizers, text, which):
    tok = tokenizers[which]
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.n_vocab for i in ids)
    assert tok.decode(ids) == text


@fuzz_settings(100, 2_000)
@given(st.text(_chars, max_size=10), st.integers(0xD800, 0xDFFF), st.text(_chars, max_size=10))
def test_lone_surrogates_are_a_value_error(tokenizers, before, surrogate, after):
    with pytest.raises(ValueError):  # UnicodeEncodeError: a str that is not Unicode text
        tokenizers[0].encode(before + chr(surrogate) + after)


def _split(seq, cuts):
    """seq cut at the given positions (sorted, deduplicated, in range)."""
    points = sorted({c % (len(seq) + 1) for c in cuts})
    return [seq[a:b] for a, b in zip([0] + points, points + [len(seq)])]


@fuzz_settings(300, 10_000)
@given(st.data(), st.integers(0, 1))
def test_incremental_decoder_joins_to_decode(tokenizers, data, which):
    tok = tokenizers[which]
    # Single high bytes make partial and invalid UTF-8 the common case.
    byte_ids = [tok.encoder[c] for b, c in bytes_to_unicode().items() if b >= 0x80]
    ids = data.draw(st.lists(st.sampled_from(byte_ids) | st.integers(0, tok.n_vocab - 1), max_size=60))
    whole = tok.decode(ids)
    decoder = tok.decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == whole
    # The decoder is reusable after flush(): a second stream decodes on its own.
    again = data.draw(st.lists(st.integers(0, tok.n_vocab - 1), max_size=10))
    assert "".join([decoder.push(i) for i in again] + [decoder.flush()]) == tok.decode(again)


@fuzz_settings(300, 10_000)
@given(st.binary(max_size=200), st.lists(st.integers(0, 10_000), max_size=8))
def test_any_bytes_decode_like_python(tokenizers, blob, cuts):
    tok = tokenizers[0]
    byte_id = {b: tok.encoder[c] for b, c in bytes_to_unicode().items()}
    ids = [byte_id[b] for b in blob]
    expected = blob.decode("utf-8", errors="replace")
    assert tok.decode(ids) == expected
    decoder = tok.decoder()
    out = "".join("".join(decoder.push(i) for i in chunk) for chunk in _split(ids, cuts)) + decoder.flush()
    assert out == expected
    # Python's own incremental decoder agrees on the same cuts (what the stream relies on).
    py = codecs.getincrementaldecoder("utf-8")(errors="replace")
    assert "".join(py.decode(c) for c in _split(blob, cuts)) + py.decode(b"", final=True) == expected


bad_ids = st.one_of(
    st.integers(max_value=-1), st.integers(min_value=10**4), st.floats(), st.text(max_size=2), st.none(),
    st.binary(max_size=2), st.lists(st.integers(0, 5), max_size=2), st.sampled_from([np.float32(1), Decimal(1)]),
)


@fuzz_settings(200, 5_000)
@given(st.lists(st.integers(0, 200), max_size=5), bad_ids, st.lists(st.integers(0, 200), max_size=5))
def test_bad_ids_are_value_or_type_errors(tokenizers, before, bad, after):
    tok = tokenizers[0]
    with pytest.raises((ValueError, TypeError)) as info:
        tok.decode(before + [bad] + after)
    assert str(info.value)
    decoder = tok.decoder()
    with pytest.raises((ValueError, TypeError)):
        for i in before + [bad]:
            decoder.push(i)


# =============================================================================================
# safetensors loader


def _valid_safetensors_bytes() -> bytes:
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b.half": rng.standard_normal(5).astype(np.float16),
        "c.bf16": ("BF16", to_bf16_bits(rng.standard_normal((2, 2)))),
        "d.double": rng.standard_normal(2),
        "e.int": np.arange(3, dtype=np.int32),
        "f.empty": np.zeros((0, 3), np.float32),
        "g.scalar": np.float32(7).reshape(()),
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.safetensors"
        save_safetensors(path, tensors, metadata={"format": "pt", "note": "fuzz"})
        return path.read_bytes()


VALID_ST = _valid_safetensors_bytes()
VALID_HEADER_LEN = struct.unpack("<Q", VALID_ST[:8])[0]
VALID_HEADER = json.loads(VALID_ST[8:8 + VALID_HEADER_LEN])
VALID_DATA = VALID_ST[8 + VALID_HEADER_LEN:]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(),
    st.text(max_size=8), st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "f32", ""]),
)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=12)
dims = st.one_of(st.integers(0, 8), st.integers(0, 2**64), st.sampled_from([2**31, 2**32 + 1, 2**40, 2**63, 2**64]),
                 st.integers(max_value=-1), st.floats(), st.booleans(), st.text(max_size=2), st.none())
shapes = st.lists(dims, max_size=6) | json_values
offsets = st.one_of(st.lists(st.integers(-10, len(VALID_DATA) + 10) | st.integers(0, 2**64) | json_scalars, max_size=3),
                    json_values)


def _header_bytes(header) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return text + b" " * (-len(text) % 8)


def _pack(header_raw: bytes, data: bytes, header_len=None) -> bytes:
    n = len(header_raw) if header_len is None else header_len
    return struct.pack("<Q", n) + header_raw + data


@st.composite
def damaged_header(draw) -> bytes:
    """The valid file's header with entries lying about dtype, shape, offsets, or replaced."""
    header = json.loads(json.dumps(VALID_HEADER))
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "extra", "drop", "metadata", "new"]))
        if field in ("dtype", "shape", "data_offsets") and not isinstance(header[name], dict):
            header[name] = {}
        if field == "dtype":
            header[name]["dtype"] = draw(json_scalars | json_values)
        elif field == "shape":
            header[name]["shape"] = draw(shapes)
        elif field == "data_offsets":
            header[name]["data_offsets"] = draw(offsets)
        elif field == "entry":
            header[name] = draw(json_values)
        elif field == "extra" and isinstance(header[name], dict):
            header[name][draw(st.text(max_size=4))] = draw(json_scalars)
        elif field == "drop" and isinstance(header[name], dict) and header[name]:
            header[name].pop(draw(st.sampled_from(sorted(header[name]))))
        elif field == "metadata":
            header["__metadata__"] = draw(json_values)
        elif field == "new":  # a consistent-looking entry for a huge tensor
            n = draw(st.sampled_from([2**20, 2**31, 2**40, 2**62]))
            header[draw(st.text(max_size=5))] = {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}
    data = VALID_DATA
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))] + draw(st.binary(max_size=8))
    return _pack(_header_bytes(header), data)


@st.composite
def flipped_bytes(draw) -> bytes:
    blob = bytearray(VALID_ST)
    end = 8 + VALID_HEADER_LEN if draw(st.booleans()) else len(blob)  # the header, or anywhere
    for _ in range(draw(st.integers(1, 12))):
        blob[draw(st.integers(0, end - 1))] ^= draw(st.integers(1, 255))
    return bytes(blob)


@st.composite
def wrong_length(draw) -> bytes:
    n = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(VALID_HEADER_LEN - 16, VALID_HEADER_LEN + 16).filter(lambda x: x >= 0),
                       st.sampled_from([0, 1, 7, 2**63, 2**64 - 1, 100 * 1024 * 1024, 100 * 1024 * 1024 + 1])))
    return struct.pack("<Q", n) + VALID_ST[8:]


safetensors_blobs = st.one_of(
    st.integers(0, len(VALID_ST)).map(lambda n: VALID_ST[:n]),  # truncated anywhere
    wrong_length(),
    flipped_bytes(),
    damaged_header(),
    json_values.map(lambda v: _pack(_header_bytes(v), VALID_DATA)),  # random JSON as the header
    st.binary(max_size=64).map(lambda b: _pack(b, VALID_DATA)),  # random bytes as the header
    st.binary(max_size=80),  # not safetensors at all
)

_counter = itertools.count()


def check_safetensors(blob: bytes, directory: Path) -> str:
    """Opens blob as a .safetensors file and reads every tensor; returns what happened.

    Allowed: success (every float tensor has its declared shape, as float32, inside the file) or
    CheckpointError with a message naming the file. Anything else raises AssertionError or
    propagates.
    """
    path = directory / f"f{next(_counter)}.safetensors"
    path.write_bytes(blob)
    try:
        try:
            f = open_safetensors(path)
        except CheckpointError as e:
            assert str(path) in str(e), e
            return "refused"
        for name in f:
            assert f.data_offset + f._entries[name].end <= len(blob)
            try:
                arr = f[name]
            except CheckpointError as e:
                assert f.dtype_of(name) not in ("F32", "F16", "BF16", "F64") and str(path) in str(e), e
                continue
            assert arr.dtype == np.float32 and arr.shape == f.shape_of(name)
        return "loaded"
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-loader")


def test_the_undamaged_file_loads(fuzz_dir):
    assert check_safetensors(VALID_ST, fuzz_dir) == "loaded"


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # F64 -> F32 of huge values
@fuzz_settings(400, 15_000)
@given(safetensors_blobs)
def test_safetensors_damage_is_a_checkpoint_error(fuzz_dir, blob):
    note(check_safetensors(blob, fuzz_dir))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    model_dir, _ = make_numpy_gpt2(tmp_path_factory.mktemp("fuzz-model"), n_layer=1, n_embd=8, n_head=2,
                                   vocab_size=20, n_positions=8)
    return model_dir


config_values = st.one_of(json_values, st.integers(-3, 40), st.sampled_from([1e-5, 1e-6, "gelu_new", "relu", "gpt2", "bert"]))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@fuzz_settings(150, 5_000)
@given(st.data())
def test_damaged_checkpoint_directory_is_a_checkpoint_error(tiny_model_dir, fuzz_dir, data):
    """load_checkpoint over a damaged config.json and/or model.safetensors."""
    model_dir = fuzz_dir / f"model{next(_counter)}"
    model_dir.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    if data.draw(st.booleans(), label="damage config"):
        for _ in range(data.draw(st.integers(1, 3))):
            key = data.draw(st.sampled_from(sorted(config) + ["n_inner", "extra"]))
            value = data.draw(config_values)
            config[key] = value
    raw_config = json.dumps(config)
    if data.draw(st.integers(0, 9)) == 0:
        raw_config = data.draw(st.sampled_from(["", "[]", "{", "null", '"x"', "\x00", json.dumps(data.draw(json_values))]))
    (model_dir / "config.json").write_text(raw_config)
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    if data.draw(st.booleans(), label="damage weights"):
        blob = bytearray(weights)
        (n,) = struct.unpack("<Q", weights[:8])
        for _ in range(data.draw(st.integers(1, 6))):
            blob[data.draw(st.integers(0, 8 + n - 1))] ^= data.draw(st.integers(1, 255))
        weights = bytes(blob[: data.draw(st.integers(0, len(blob)))] if data.draw(st.booleans()) else blob)
    (model_dir / "model.safetensors").write_bytes(weights)
    try:
        hparams, params = load_checkpoint(model_dir)
    except CheckpointError as e:
        assert str(e)
        return
    finally:
        for f in model_dir.iterdir():
            f.unlink()
        model_dir.rmdir()
    # Loaded: the params are what the engine takes (values may be NaN after a flip: allowed).
    assert gpt2gen.forward([0], params, hparams["n_head"]).shape == (1, hparams["n_vocab"])



# Ids of any size, huge ones included: B15 (a list as long as the largest id) is fixed.
vocab_values = st.one_of(st.integers(-5, 400), st.integers(), st.sampled_from([2**31, 2**40, 2**63, 10**30]),
                         st.text(max_size=3), st.none(), st.floats(), st.booleans(), st.lists(st.integers(0, 3), max_size=2))
small_json = json_values


@fuzz_settings(100, 2_000)
@given(st.data())
def test_damaged_tokenizer_files(tiny_model_dir, fuzz_dir, data):
    """load_pretrained over a damaged vocab.json / merges.txt: CheckpointError or a working encoder."""
    from gpt2gen.checkpoint import load_pretrained

    model_dir = fuzz_dir / f"tok{next(_counter)}"
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors", "merges.txt"):
        (model_dir / name).write_bytes((tiny_model_dir / name).read_bytes())
    vocab = json.loads((tiny_model_dir / "vocab.json").read_text(encoding="utf-8"))
    kind = data.draw(st.sampled_from(["entries", "json", "bytes", "merges"]))
    raw = None
    if kind == "entries":
        keys = sorted(vocab)
        for _ in range(data.draw(st.integers(1, 4))):
            vocab[data.draw(st.sampled_from(keys) | st.text(max_size=3))] = data.draw(vocab_values)
    elif kind == "json":
        raw = json.dumps(data.draw(small_json)).encode()
    elif kind == "bytes":
        raw = data.draw(st.binary(max_size=40))
    else:
        lines = data.draw(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=6), max_size=5))
        (model_dir / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    (model_dir / "vocab.json").write_bytes(raw if raw is not None else json.dumps(vocab).encode())
    try:
        encoder, hparams, params = load_pretrained(model_dir)
        assert encoder.n_vocab <= hparams["n_vocab"]
        encoder.decode(encoder.encode("hello world"))
    except CheckpointError as e:
        assert str(e)
    finally:
        for f in model_dir.iterdir():
            f.unlink()
        model_dir.rmdir()


LOADER_UNDER_RLIMIT = r"""
import json, os, resource, struct, sys
import numpy as np
from gpt2gen.checkpoint import CheckpointError, load_checkpoint, open_safetensors
from gpt2gen.packing import pack_params

def vm_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

directory = sys.argv[1]
limit = vm_kib("VmSize") * 1024 + 256 * 2**20  # what is mapped now, plus 256 MiB
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
rss_before = vm_kib("VmRSS")
results = {}
for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    try:
        f = open_safetensors(path)
        for key in f:
            f[key]
        results[name] = "loaded"
    except CheckpointError as e:
        results[name] = "CheckpointError"
    except BaseException as e:
        results[name] = f"{type(e).__name__}: {e}"[:300]
print(json.dumps({"results": results, "rss_growth_kib": vm_kib("VmHWM") - rss_before}))
"""


def _lying_files() -> dict[str, bytes]:
    """Files whose headers promise far more than they hold (each must be refused cheaply)."""
    e = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    data = b"\0" * 8

    def file(header, data=data, header_len=None):
        return _pack(_header_bytes(header), data, header_len)

    return {
        "huge-shape": file({"t": {**e, "shape": [2**40, 2**40]}}),
        "huge-shape-consistent": file({"t": {**e, "shape": [2**35], "data_offsets": [0, 2**37]}}),
        "huge-offsets": file({"t": {**e, "data_offsets": [2**62, 2**62 + 8]}}),
        "offsets-beyond-file": file({"t": {**e, "data_offsets": [0, 2**31]}}),
        "huge-header-length": file({"t": e}, header_len=2**63),
        "header-length-beyond-file": file({"t": e}, header_len=99 * 2**20),
        "max-header-length": file({"t": e}, header_len=100 * 2**20),
        "many-dims": file({"t": {**e, "shape": [2**63] * 64}}),
        "f16-huge": file({"t": {"dtype": "F16", "shape": [2**33], "data_offsets": [0, 2**34]}}),
        "bf16-huge": file({"t": {"dtype": "BF16", "shape": [2**33], "data_offsets": [0, 2]}}),
        "truncated-data": file({"t": {**e, "shape": [2**20], "data_offsets": [0, 4 * 2**20]}}),
    }


@pytest.mark.skipif(SANITIZED, reason="ASan reserves terabytes of shadow address space; RLIMIT_AS cannot apply")
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_lying_headers_allocate_nothing_under_an_address_space_limit(tmp_path):
    for name, blob in _lying_files().items():
        (tmp_path / name).write_bytes(blob)
    out = subprocess.run([sys.executable, "-c", LOADER_UNDER_RLIMIT, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["results"] == {name: "CheckpointError" for name in _lying_files()}, report
    assert report["rss_growth_kib"] < 32 * 1024, report  # nothing was allocated for the claims


# =============================================================================================
# generate / forward arguments

N_VOCAB, N_CTX, N_HEAD = 40, 24, 2
PARAMS = random_params(np.random.default_rng(7), n_layer=1, n_embd=8, n_head=N_HEAD, n_vocab=N_VOCAB, n_ctx=N_CTX)
PARAMS64 = random_params(np.random.default_rng(7), n_layer=1, n_embd=8, n_head=N_HEAD, n_vocab=N_VOCAB, n_ctx=N_CTX,
                         dtype=np.float64)
PARAMS_BF16 = pack_params(PARAMS, "bf16")
PARAMS_INT8 = pack_params(PARAMS, "int8")
ALL_PARAMS = [PARAMS, PARAMS64, PARAMS_BF16, PARAMS_INT8]


class _Weird:
    """An object that is nothing in particular."""


def _np_scalars(value):
    """NumPy scalars of several types (value is in -5..50, which every type can hold but unsigned)."""
    return st.sampled_from([np.int8, np.int64, np.uint64, np.float32, np.float64, np.bool_]).map(
        lambda t: t(abs(value)) if t is np.uint64 else t(value))


numeric_arrays = st.tuples(
    st.sampled_from(["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "?", "c8", "U2", "O", "M8[s]"]),
    st.lists(st.integers(0, 3), max_size=3),
    st.integers(0, 2**32),
).map(lambda t: _array(*t))


def _array(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape)) if shape else 1
    values = rng.integers(-3, N_VOCAB + 3, size)
    if dtype == "O":
        return np.array(list(values), dtype=object).reshape(shape)
    if dtype.startswith("U"):
        return values.astype(str).reshape(shape)
    if dtype.startswith("M8"):
        return values.astype("M8[s]").reshape(shape)
    with np.errstate(all="ignore"):
        return values.astype(dtype).reshape(shape)


garbage = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([2**31, -(2**31) - 1, 2**63, 2**64, -(2**64), 2**70]),
    st.floats(), st.sampled_from([float("nan"), float("inf"), -0.0, 5e-324, 1e308]),
    st.text(max_size=4), st.binary(max_size=4), st.complex_numbers(max_magnitude=10), st.fractions(max_denominator=10),
    st.decimals(allow_nan=True, places=2), st.lists(st.integers(-3, N_VOCAB + 3), max_size=5),
    st.lists(st.lists(st.integers(-3, N_VOCAB + 3), max_size=4), max_size=3), st.tuples(st.integers(0, 5)),
    st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=2), numeric_arrays,
    st.integers(-5, 50).flatmap(_np_scalars), st.builds(_Weird), st.just(range(3)), st.just(object),
    st.sampled_from(["error", "slide", "SLIDE", "", "error\0", EOT]), st.sets(st.integers(0, 3), max_size=2),
)


@st.composite
def prompts(draw):
    """Valid-looking and invalid prompts and batches, including NumPy forms."""
    ids = st.integers(0, N_VOCAB - 1)
    valid = st.lists(ids, min_size=1, max_size=8)
    kind = draw(st.sampled_from(["list", "batch", "array", "array2d", "ragged", "tuple", "garbage", "layout"]))
    if kind == "list":
        return draw(valid)
    if kind == "batch":
        return draw(st.lists(valid | st.lists(st.integers(-2, N_VOCAB + 2), max_size=4), min_size=0, max_size=4))
    if kind == "array":
        return np.array(draw(valid), dtype=draw(st.sampled_from(["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8"])))
    if kind == "array2d":
        return np.array(draw(st.lists(st.lists(ids, min_size=2, max_size=2), min_size=1, max_size=3)))
    if kind == "ragged":
        return [draw(valid), np.array(draw(valid)), tuple(draw(valid))]
    if kind == "tuple":
        return tuple(draw(valid))
    if kind == "layout":
        base = np.array(draw(st.lists(ids, min_size=8, max_size=16)), dtype=draw(st.sampled_from(["i4", "i8", "u8"])))
        form = draw(st.sampled_from(["stride", "reverse", "broadcast", "fortran", "unaligned"]))
        if form == "stride":
            return base[::2]
        if form == "reverse":
            return base[::-1]
        if form == "broadcast":
            return np.broadcast_to(base[:1], (6,))
        if form == "fortran":
            return np.asfortranarray(base[:8].reshape(2, 4))
        raw = np.zeros(base.nbytes + base.itemsize, np.uint8)
        unaligned = raw[1:1 + base.nbytes].view(base.dtype)
        unaligned[:] = base
        return unaligned
    return draw(garbage)


def _interesting(name):
    """Per-argument values near and past the valid ranges, plus garbage."""
    special = {
        "n_tokens_to_generate": st.integers(-3, N_CTX + 3) | st.sampled_from([2**31 - 1, 2**31, 2**63]),
        "temperature": st.floats(-1, 5) | st.sampled_from([0.0, 1e-300, 5e-324, 1e300]),
        "top_k": st.integers(-3, N_VOCAB + 3) | st.sampled_from([2**31 - 1, 2**31, -(2**31)]),
        "top_p": st.floats(-0.5, 1.5) | st.sampled_from([0.0, 1.0, 1e-300, np.nextafter(1, 0)]),
        "min_p": st.floats(-0.5, 1.5) | st.sampled_from([0.0, 1.0, 5e-324]),
        "repetition_penalty": st.floats(-1, 10) | st.sampled_from([1e-300, 1e300, 1.0]),
        "presence_penalty": st.floats(-3, 3) | st.sampled_from([-2.0, 2.0]),
        "frequency_penalty": st.floats(-3, 3) | st.sampled_from([-2.0, 2.0]),
        "seed": st.none() | st.integers(-5, 2**64 + 5) | st.lists(st.integers(-1, 2**64), max_size=5),
        "eos_token_id": st.none() | st.integers(-3, N_VOCAB + 3) | st.lists(st.integers(-3, N_VOCAB + 3), max_size=4)
                        | st.sampled_from([2**31, -(2**31) - 1, 2**40, [1, 2**33]]),
        "context_overflow": st.sampled_from(["error", "slide"]),
        "cancel": st.none() | st.builds(gpt2gen.CancelToken) | st.builds(_cancelled_token),
        "on_token": st.sampled_from([None, lambda *a: True, lambda *a: False, lambda *a: None,
                                     lambda *a: np.array([1, 2]), 5, lambda: True]),
    }[name]
    return special | garbage


def _cancelled_token():
    token = gpt2gen.CancelToken()
    token.cancel()
    return token


GENERATE_ARGS = ["n_tokens_to_generate", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                 "presence_penalty", "frequency_penalty", "seed", "eos_token_id", "context_overflow", "on_token",
                 "cancel"]


def _check_output(out, inputs, n, kwargs):
    batch = isinstance(out, list) and all(isinstance(o, list) for o in out) and (
        isinstance(inputs, (list, tuple)) and inputs and all(isinstance(p, (list, tuple, np.ndarray)) for p in inputs)
        or isinstance(inputs, np.ndarray) and inputs.ndim == 2)
    rows = out if batch else [out]
    for row in rows:
        assert isinstance(row, list) and all(isinstance(t, int) and 0 <= t < N_VOCAB for t in row), out
        assert len(row) <= n


class _threads:
    """Runs a block with the engine's OpenMP thread count set to n (1 is the fast common case;
    2 exercises the parallel partitioning of every kernel)."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = gpt2gen.num_threads()
        gpt2gen.set_num_threads(self.n)

    def __exit__(self, *exc):
        gpt2gen.set_num_threads(self.before)


thread_counts = st.sampled_from([1, 1, 1, 2])


def _call_generate(inputs, params, n_head, kwargs):
    """generate() with a watchdog: a valid huge request with a sliding window would run for hours."""
    kwargs = dict(kwargs)
    n = kwargs.pop("n_tokens_to_generate", 3)
    timer = None
    if isinstance(n, numbers.Integral) and n > N_CTX and kwargs.get("context_overflow") == "slide":
        token = kwargs.setdefault("cancel", gpt2gen.CancelToken())
        if isinstance(token, gpt2gen.CancelToken):
            timer = threading.Timer(0.05, token.cancel)
            timer.start()
    try:
        return n, gpt2gen.generate(inputs, params, n_head, n, **kwargs)
    finally:
        if timer is not None:
            timer.cancel()


@fuzz_settings(200, 8_000)
@given(st.data())
def test_generate_arguments(data):
    inputs = data.draw(prompts(), label="inputs")
    names = data.draw(st.lists(st.sampled_from(GENERATE_ARGS), unique=True, max_size=5), label="fuzzed")
    kwargs = {name: data.draw(_interesting(name), label=name) for name in names}
    params = data.draw(st.sampled_from(ALL_PARAMS), label="params")
    try:
        with _threads(data.draw(thread_counts, label="threads")):
            n, out = _call_generate(inputs, params, N_HEAD, kwargs)
    except (TypeError, ValueError) as e:
        assert str(e), repr(e)
        return
    _check_output(out, inputs, n if isinstance(n, numbers.Integral) else 0, kwargs)


@fuzz_settings(150, 6_000)
@given(prompts(), thread_counts)
def test_forward_inputs(inputs, threads):
    try:
        with _threads(threads):
            logits = gpt2gen.forward(inputs, PARAMS, N_HEAD)
    except (TypeError, ValueError) as e:
        assert str(e)
        return
    assert logits.shape[1:] == (N_VOCAB,) and logits.dtype == np.float32
    assert np.array_equal(logits, gpt2gen.forward(np.ascontiguousarray(np.asarray(inputs), dtype=np.int64), PARAMS, N_HEAD))


# --- malformed params ----------------------------------------------------------------------------


def _paths(node, path=()):
    """Every (container path, key) in a params tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key
            yield from _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield path, i
            yield from _paths(value, path + (i,))


def _copy_tree(node):
    if isinstance(node, dict):
        return {k: _copy_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy_tree(v) for v in node]
    return node


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


param_garbage = st.one_of(
    garbage,
    st.tuples(st.sampled_from(["f4", "f8", "f2", "i4", "?", "u2", "i1"]), st.lists(st.integers(0, 9), max_size=3))
    .map(lambda t: np.zeros(t[1], dtype=t[0])),
    st.fixed_dictionaries({"format": st.sampled_from(["bf16", "int8", "fp8", "", 5]),
                           "data": st.sampled_from([np.zeros((8, 24), np.uint16), np.zeros((8, 24), np.int8),
                                                    np.zeros((24, 8), np.uint16), np.zeros(3, np.int8)])},
                          optional={"scales": st.sampled_from([np.ones((1, 24), np.float32), np.ones((8, 1), np.float32),
                                                               np.ones((1, 24), np.float64), np.ones(0, np.float32)])}),
)

LAYOUTS = ["transpose", "stride", "unaligned", "fortran", "readonly", "float64", "empty", "list", "0d", "matrix",
           "subclass"]


class _Subclass(np.ndarray):
    pass


def _reshape_leaf(leaf, how):
    """A variant of a parameter array: same values, another layout or type."""
    if not isinstance(leaf, np.ndarray):
        return leaf
    if how == "transpose":
        return leaf.T
    if how == "stride":
        return leaf[..., ::2] if leaf.ndim else leaf
    if how == "unaligned":
        raw = np.zeros(leaf.nbytes + 1, np.uint8)
        out = raw[1:].view(leaf.dtype).reshape(leaf.shape)
        out[...] = leaf
        return out
    if how == "fortran":
        return np.asfortranarray(leaf)
    if how == "readonly":
        out = leaf.copy()
        out.flags.writeable = False
        return out
    if how == "float64":
        return leaf.astype(np.float64)
    if how == "empty":
        return leaf[:0]
    if how == "list":
        return leaf.tolist()
    if how == "0d":
        return np.float32(1)
    if how == "matrix" and leaf.ndim == 2:
        return np.asmatrix(leaf)
    if how == "subclass":
        return leaf.view(_Subclass)
    return leaf


@st.composite
def malformed_params(draw):
    params = _copy_tree(draw(st.sampled_from(ALL_PARAMS)))
    for _ in range(draw(st.integers(1, 3))):
        locations = list(_paths(params))
        if not locations:
            break
        path, key = draw(st.sampled_from(locations))
        try:
            parent = _get(params, path)
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, (dict, list)):
            continue
        op = draw(st.sampled_from(["delete", "replace", "layout", "extra", "wrap", "container"]))
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(param_garbage)
        elif op == "layout":
            parent[key] = _reshape_leaf(parent[key], draw(st.sampled_from(LAYOUTS)))
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.text(max_size=3))] = draw(garbage)
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "container":
            value = parent[key]
            if isinstance(value, list):
                parent[key] = draw(st.sampled_from([tuple, lambda v: dict(enumerate(v)), lambda v: iter(v), str]))(value)
            elif isinstance(value, dict):
                parent[key] = draw(st.sampled_from([list, lambda v: list(v.items()), lambda v: type("M", (), v)]))(value)
    return params


n_heads = st.one_of(st.just(N_HEAD), st.integers(-3, 10), st.sampled_from([2**31 - 1, 2**31, 2**63, 2**70]), garbage)


@fuzz_settings(250, 10_000)
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # the np.matrix layout
@given(malformed_params(), n_heads, st.sampled_from(["forward", "generate", "model"]), thread_counts)
def test_malformed_params(params, n_head, call, threads):
    try:
        with _threads(threads):
            _call_with(params, n_head, call)
    except (TypeError, ValueError) as e:
        assert str(e), repr(e)


def _call_with(params, n_head, call):
    if call == "forward":
        gpt2gen.forward([1, 2], params, n_head)
    elif call == "generate":
        gpt2gen.generate([[1, 2], [3]], params, n_head, 2, temperature=0.5, seed=1)
    else:
        _core.Model(params, n_head).forward([0])


# =============================================================================================
# regression tests for the bugs found, named after what they guard; the comment above each names
# its bug in docs/SAFETY.md's list (xfail until fixed; see the module docstring)

_IDS = np.arange(12, dtype=np.int64)


def _run_isolated(code: str, timeout: float = 120):
    return run_isolated(code, timeout=timeout, setup=TINY_PARAMS)


TINY_PARAMS = "params = random_params(np.random.default_rng(7), n_layer=1, n_embd=8, n_head=2, n_vocab=40, n_ctx=24)\n"


# B1 (docs/SAFETY.md)
def test_strided_and_fortran_order_ids_are_read_by_index():
    strided = _IDS[::2]  # stays in bounds, so safe under ASan: only the values are wrong
    assert gpt2gen.generate(strided, PARAMS, N_HEAD, 3) == gpt2gen.generate(strided.tolist(), PARAMS, N_HEAD, 3)
    fortran = np.asfortranarray(np.array([[1, 2, 3], [4, 5, 6]]))
    assert gpt2gen.generate(fortran, PARAMS, N_HEAD, 3) == gpt2gen.generate(fortran.tolist(), PARAMS, N_HEAD, 3)


# B1 (docs/SAFETY.md)
@pytest.mark.parametrize("layout", ["np.arange(10)[::-1]", "np.broadcast_to(np.int64(3), (20,))"])
def test_reversed_and_broadcast_ids_stay_in_bounds(layout):
    out = _run_isolated(f"""
        ids = {layout}
        assert gpt2gen.generate(ids, params, 2, 3) == gpt2gen.generate(ids.tolist(), params, 2, 3)
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# B1 (docs/SAFETY.md)
def test_misaligned_ids_are_read_correctly():
    out = _run_isolated("""
        raw = np.zeros(8 * 5 + 1, np.uint8)
        ids = raw[1:].view(np.int64)
        ids[:] = [1, 2, 3, 4, 5]
        assert gpt2gen.generate(ids, params, 2, 3) == gpt2gen.generate([1, 2, 3, 4, 5], params, 2, 3)
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# B2 (docs/SAFETY.md)
@pytest.mark.parametrize("eos", [2**31, -(2**31) - 1, [3, 2**40]])
def test_eos_token_id_outside_int32_is_a_value_error(eos):
    with pytest.raises(ValueError, match="eos_token_id"):
        gpt2gen.generate([1], PARAMS, N_HEAD, 3, eos_token_id=eos)


# B3 (docs/SAFETY.md)
def test_n_head_beyond_int64_is_a_value_error():
    with pytest.raises(ValueError, match="n_head"):
        gpt2gen.forward([1], PARAMS, 2**70)


# B4 (docs/SAFETY.md)
@pytest.mark.parametrize("name", FLOAT_ARGS)
def test_float_options_beyond_float_range_are_value_errors(name):
    with pytest.raises(ValueError, match=name):
        gpt2gen.generate([1], PARAMS, N_HEAD, 3, **{name: 10**400})


# B6 (docs/SAFETY.md)
def test_a_huge_thread_count_does_not_crash():
    out = _run_isolated("""
        try:
            gpt2gen.set_num_threads(100_000)
        except ValueError:
            print("ok")  # refusing it is fine
        else:
            gpt2gen.forward([1, 2, 3], params, 2)
            print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-3000:])


# B7 (docs/SAFETY.md)
@pytest.mark.parametrize("dtype", [[], {}, ["F32"]])
def test_a_non_string_safetensors_dtype_is_a_checkpoint_error(tmp_path, dtype):
    path = tmp_path / "x.safetensors"
    path.write_bytes(_pack(_header_bytes({"t": {"dtype": dtype, "shape": [], "data_offsets": [0, 0]}}), b""))
    with pytest.raises(CheckpointError, match="dtype"):
        open_safetensors(path)


# B8 (docs/SAFETY.md)
@pytest.mark.parametrize("nesting", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
                         ids=["arrays", "objects"])
def test_a_deeply_nested_safetensors_header_is_a_checkpoint_error(tmp_path, nesting):
    path = tmp_path / "x.safetensors"
    path.write_bytes(_pack(nesting, b""))
    with pytest.raises(CheckpointError):
        open_safetensors(path)


# B9 (docs/SAFETY.md)
@pytest.mark.parametrize("header", [
    b'{"t":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,0]}}',
    json.dumps({"t": {"dtype": "U8", "shape": [3] * 20_000, "data_offsets": [0, 0]}}).encode(),
], ids=["5000-digit-dimension", "20000-dimensions"])
def test_huge_numbers_in_the_safetensors_header_are_checkpoint_errors(tmp_path, header):
    path = tmp_path / "x.safetensors"
    path.write_bytes(_pack(header, b""))
    with pytest.raises(CheckpointError):
        open_safetensors(path)


# B9 (docs/SAFETY.md)
def test_a_shape_of_many_dimensions_is_refused_quickly(tmp_path):
    import time
    path = tmp_path / "x.safetensors"
    path.write_bytes(_pack(json.dumps({"t": {"dtype": "U8", "shape": [2] * 100_000,
                                             "data_offsets": [0, 0]}}).encode(), b""))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError):
        open_safetensors(path)
    assert time.perf_counter() - t0 < 0.25  # parsing the JSON itself takes ~10 ms


# B11 (docs/SAFETY.md)
@pytest.mark.parametrize("shape, offsets", [([0, 2**62, 2**62], [0, 0]), ([0, 2**63], [0, 0]), ([1] * 65, [0, 4])])
def test_shapes_numpy_cannot_represent_are_checkpoint_errors(tmp_path, shape, offsets):
    path = tmp_path / "x.safetensors"
    path.write_bytes(_pack(_header_bytes({"t": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}), b"\0" * 8))
    with pytest.raises(CheckpointError, match="shape"):
        open_safetensors(path)["t"]


# B10 (docs/SAFETY.md)
@pytest.mark.skipif(SANITIZED, reason="ASan reserves terabytes of shadow address space; RLIMIT_AS cannot apply")
def test_a_huge_n_layer_in_config_allocates_nothing(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["n_layer"] = 10**9
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    code = f"""
        import resource, time
        from gpt2gen.checkpoint import CheckpointError, load_checkpoint
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + 256 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
        t0 = time.time()
        try:
            load_checkpoint({str(model_dir)!r})
        except CheckpointError:
            print("ok" if time.time() - t0 < 5 else "slow")
        except MemoryError:
            print("MemoryError")
    """
    out = _run_isolated(code, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.stdout, out.stderr[-2000:])


# B14 (docs/SAFETY.md)
@pytest.mark.parametrize("vocab", ['[1, 2]', '{"a": "x"}', '{"a": -5}', '{', '\xff'],
                         ids=["list", "string-id", "negative-id", "not-json", "not-utf8"])
def test_a_malformed_vocab_json_is_a_checkpoint_error(tiny_model_dir, tmp_path, vocab):
    from gpt2gen.checkpoint import load_pretrained

    for name in ("config.json", "model.safetensors", "merges.txt"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    (tmp_path / "vocab.json").write_bytes(vocab.encode("latin-1"))
    with pytest.raises(CheckpointError, match="vocab.json"):
        load_pretrained(tmp_path)


# B14 (docs/SAFETY.md)
def test_a_negative_vocab_id_does_not_overwrite_another_token():
    # Id -1 is taken as an index from the end: token "b" silently becomes what id 0 decodes to.
    from gpt2gen.tokenizer import Tokenizer

    try:
        tok = Tokenizer({"a": 0, "b": -1}, [])
    except ValueError:
        return  # refusing the vocabulary is the fix
    assert tok.decode([0]) == "a"


# B15 (docs/SAFETY.md)
@pytest.mark.skipif(SANITIZED, reason="ASan reserves terabytes of shadow address space; RLIMIT_AS cannot apply")
def test_a_huge_id_in_vocab_json_allocates_nothing(tiny_model_dir, tmp_path):
    for name in ("config.json", "model.safetensors", "merges.txt"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    vocab = json.loads((tiny_model_dir / "vocab.json").read_text(encoding="utf-8"))
    vocab["x"] = 2**40  # [None] * (2**40 + 1): 8 TiB
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    out = _run_isolated(f"""
        import resource
        from gpt2gen.checkpoint import CheckpointError, load_pretrained
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + 256 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            load_pretrained({str(tmp_path)!r})
        except CheckpointError:
            print("ok")
        except MemoryError:
            print("MemoryError")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.stdout, out.stderr[-2000:])


# B12 (docs/SAFETY.md)
def test_non_array_embeddings_are_not_converted():
    """B12 (fixed in 7222f87): a non-array wte/wpe used to go through np.asarray first."""
    for key in ("wte", "wpe"):
        params = dict(PARAMS)
        params[key] = range(10**12)  # converting it would take 8 TB
        with pytest.raises((TypeError, ValueError), match=key):
            gpt2gen.forward([1], params, N_HEAD)


# =============================================================================================
# atheris harnesses: python tests/test_fuzz.py TARGET [libFuzzer flags, e.g. -max_total_time=60]


def _atheris_tokenizer():
    import atheris

    directory = Path(tempfile.mkdtemp())
    write_tokenizer_files(directory, 700)
    tok = Tokenizer.from_files(directory / "vocab.json", directory / "merges.txt")
    byte_id = {b: tok.encoder[c] for b, c in bytes_to_unicode().items()}

    def one_input(data: bytes):
        fdp = atheris.FuzzedDataProvider(data)
        text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))
        ids = tok.encode(text)
        assert tok.decode(ids) == text, (text, ids)
        blob = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        stream = [byte_id[b] for b in blob] + [fdp.ConsumeIntInRange(0, tok.n_vocab - 1) for _ in range(fdp.ConsumeIntInRange(0, 8))]
        decoder = tok.decoder()
        assert "".join(decoder.push(i) for i in stream) + decoder.flush() == tok.decode(stream)

    return one_input


def _atheris_safetensors():
    import atheris

    directory = Path(tempfile.mkdtemp())

    def one_input(data: bytes):
        fdp = atheris.FuzzedDataProvider(data)
        mode = fdp.ConsumeIntInRange(0, 3)
        if mode == 0:  # the whole file
            blob = fdp.ConsumeBytes(fdp.remaining_bytes())
        elif mode == 1:  # a header, then the valid data
            blob = _pack(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512)), VALID_DATA)
        elif mode == 2:  # the valid file with bytes overwritten
            blob = bytearray(VALID_ST)
            for _ in range(fdp.ConsumeIntInRange(1, 16)):
                blob[fdp.ConsumeIntInRange(0, len(blob) - 1)] = fdp.ConsumeInt(1) & 0xFF
            blob = bytes(blob[: fdp.ConsumeIntInRange(0, len(blob))])
        else:  # a header as text
            blob = _pack(fdp.ConsumeUnicodeNoSurrogates(400).encode("utf-8"), VALID_DATA)
        try:
            check_safetensors(blob, directory)
        except CheckpointError:
            raise

    return one_input


def _atheris_generate():
    import atheris

    pool = [None, True, 0, 1, 3, -1, 2**31, 2**63, 2**70, 0.5, float("nan"), float("inf"), -0.0, 1e300, "slide",
            "error", "", b"x", [1, 2], [[1], [2, 3]], [], [[]], (4,), {"a": 1}, np.int64(2), np.uint64(2**64 - 1),
            np.float32(0.7), np.array([1, 2], np.int32), np.array([[1, 2]], np.uint8), np.zeros((2, 2, 2), int),
            np.array([1.5]), Fraction(1, 3), Decimal("0.5"), complex(1, 1), range(3), _Weird(), [2**40], [-1, 5]]

    def pick(fdp):
        i = fdp.ConsumeIntInRange(0, len(pool) + 3)
        return pool[i] if i < len(pool) else fdp.ConsumeIntInRange(-5, N_VOCAB + 5) if i == len(pool) else \
            fdp.ConsumeFloat() if i == len(pool) + 1 else [fdp.ConsumeIntInRange(-2, N_VOCAB + 2) for _ in range(fdp.ConsumeIntInRange(0, 6))]

    def one_input(data: bytes):
        fdp = atheris.FuzzedDataProvider(data)
        inputs = pick(fdp) if fdp.ConsumeBool() else [fdp.ConsumeIntInRange(0, N_VOCAB - 1) for _ in range(fdp.ConsumeIntInRange(1, 6))]
        kwargs = {name: pick(fdp) for name in GENERATE_ARGS if name not in ("on_token", "cancel") and fdp.ConsumeBool()}
        try:
            n, out = _call_generate(inputs, PARAMS, N_HEAD, kwargs)
        except (TypeError, ValueError) as e:
            assert str(e)
            return
        _check_output(out, inputs, n if isinstance(n, numbers.Integral) else 0, kwargs)

    return one_input


def _instrument_gpt2gen(atheris):
    """Coverage of gpt2gen's own Python functions and methods (nested ones with them).
    atheris.instrument_all() would also instrument numpy, Hypothesis and the rest of what this
    file imports: ~100 s before each harness starts (on 2 cores), for coverage that is noise."""
    def functions(namespace, module_name):
        for value in vars(namespace).values():
            value = getattr(value, "__func__", value)  # staticmethod, classmethod
            if inspect.isfunction(value) and value.__module__ == module_name:
                yield value
            elif inspect.isclass(value) and value.__module__ == module_name:
                yield from functions(value, module_name)

    instrumented = set()
    for name, module in list(sys.modules.items()):
        if name == "gpt2gen" or name.startswith("gpt2gen."):
            for function in functions(module, name):
                if function not in instrumented:  # (a function bound to two names)
                    instrumented.add(function)
                    atheris.instrument_func(function)


if __name__ == "__main__":
    import atheris

    targets = {"tokenizer": _atheris_tokenizer, "safetensors": _atheris_safetensors, "generate": _atheris_generate}
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(targets)}}} [libFuzzer flags]")
    one_input = targets[sys.argv[1]]()
    _instrument_gpt2gen(atheris)
    atheris.Setup([sys.argv[0]] + sys.argv[2:], one_input)
    atheris.Fuzz()
