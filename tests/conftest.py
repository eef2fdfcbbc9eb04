"""Shared test helpers: small random GPT-2 checkpoints in Hugging Face layout.

Two builders, usable from any test file (``from conftest import ...`` or the fixtures below):

* ``make_random_gpt2(tmp_path, **config) -> (model_dir, model)``: a random
  ``transformers.GPT2LMHeadModel`` saved with ``save_pretrained`` (``model.safetensors`` with the
  ``transformer.`` prefix, ``config.json``) plus a valid byte-level ``vocab.json``/``merges.txt``.
  Needs torch and transformers (it skips the calling test when they are missing).
* ``make_numpy_gpt2(tmp_path, **config) -> (model_dir, tensors)``: the same files written from
  NumPy with the raw safetensors writer below, with the Hub's unprefixed names (``wte.weight``,
  ``h.0.attn.c_attn.weight``, ...) and its ``h.*.attn.bias`` buffers. No torch needed.

plus ``read_safetensors_raw``/``write_safetensors_raw`` to build malformed files byte by byte.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

import gpt2gen

EOT = "<|endoftext|>"


# --------------------------------------------------------------------------------------------
# tokenizer files


def byte_symbols() -> list[str]:
    """GPT-2's byte -> printable character table, as a list indexed by byte value.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are moved
    to the code points from 256 upwards, in byte order.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    symbols, shifted = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def write_tokenizer_files(model_dir, vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small valid GPT-2 tokenizer with exactly ``vocab_size`` ids, ``<|endoftext|>`` last.

    With ``vocab_size >= 257``: the 256 byte symbols, merges of letter pairs (``Ġt``, ``th``,
    ``he``, ...) as long as there is room, then filler tokens. With fewer ids only the first
    ``vocab_size - 1`` byte symbols fit (such a tokenizer cannot spell every byte) and no merges.
    """
    model_dir = Path(model_dir)
    symbols = byte_symbols()
    space = symbols[ord(" ")]  # 'Ġ'
    n_plain = vocab_size - 1
    tokens = list(symbols[: min(256, n_plain)])
    merges: list[tuple[str, str]] = []
    if n_plain > 256:
        letters = "etaonihsrdlucmfwygpbvkxjqz"
        pairs = [(space, c) for c in letters] + [(a, b) for a in letters for b in letters]
        for a, b in pairs:
            if len(tokens) == n_plain:
                break
            merges.append((a, b))
            tokens.append(a + b)
        k = 0
        while len(tokens) < n_plain:  # unreachable by BPE but valid vocabulary entries
            tokens.append(f"<|filler{k}|>")
            k += 1
    tokens.append(EOT)
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == vocab_size
    (model_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (model_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return vocab, merges


# --------------------------------------------------------------------------------------------
# raw safetensors


def read_safetensors_raw(path) -> tuple[dict, bytes]:
    """``(header dict including __metadata__, data bytes)`` of a safetensors file."""
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def write_safetensors_raw(path, header: dict, data: bytes, *, header_len: Optional[int] = None) -> None:
    """Write ``header`` (padded with spaces to a multiple of 8 bytes) and ``data`` as given.

    Nothing is checked, so this writes malformed files too; ``header_len`` overrides the
    8-byte length field.
    """
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    length = len(text) if header_len is None else header_len
    Path(path).write_bytes(struct.pack("<Q", length) + text + data)


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
              np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8"}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16) by truncation."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def save_safetensors(path, tensors: dict[str, Any], metadata: Optional[dict] = None) -> None:
    """Write NumPy arrays as safetensors; a value ``("BF16", uint16_bits)`` writes bfloat16."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    chunks, offset = [], 0
    for name, value in tensors.items():
        if isinstance(value, tuple):
            dtype, arr = value
        else:
            arr = np.asarray(value)
            dtype = _ST_DTYPES[arr.dtype]
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    write_safetensors_raw(path, header, b"".join(chunks))


# --------------------------------------------------------------------------------------------
# random checkpoints


def _config_json(n_layer, n_embd, n_head, vocab_size, n_positions, extra=None) -> dict:
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-05,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "n_inner": None,
        "vocab_size": vocab_size,
        "bos_token_id": vocab_size - 1,
        "eos_token_id": vocab_size - 1,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
    }
    config.update(extra or {})
    return config


def _fresh_dir(tmp_path, name: str) -> Path:
    base = Path(tmp_path) / name
    path, k = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{k}")
        k += 1
    path.mkdir(parents=True)
    return path


def numpy_gpt2_tensors(n_layer=2, n_embd=32, n_head=4, vocab_size=301, n_positions=50, seed=0,
                       with_buffers=True) -> dict[str, np.ndarray]:
    """Random float32 GPT-2 weights under the Hub's unprefixed Hugging Face names."""
    rng = np.random.default_rng(seed)
    E = n_embd

    def rand(*shape, loc=0.0, scale=0.1):
        return (loc + scale * rng.standard_normal(shape)).astype(np.float32)

    t = {"wte.weight": rand(vocab_size, E), "wpe.weight": rand(n_positions, E, scale=0.05)}
    for i in range(n_layer):
        h = f"h.{i}."
        t[h + "ln_1.weight"], t[h + "ln_1.bias"] = rand(E, loc=1.0), rand(E)
        if with_buffers:  # what the Hub's gpt2 file stores next to the weights
            t[h + "attn.bias"] = np.tril(np.ones((n_positions, n_positions), np.float32))[None, None]
        t[h + "attn.c_attn.weight"], t[h + "attn.c_attn.bias"] = rand(E, 3 * E), rand(3 * E)
        t[h + "attn.c_proj.weight"], t[h + "attn.c_proj.bias"] = rand(E, E), rand(E)
        t[h + "ln_2.weight"], t[h + "ln_2.bias"] = rand(E, loc=1.0), rand(E)
        t[h + "mlp.c_fc.weight"], t[h + "mlp.c_fc.bias"] = rand(E, 4 * E), rand(4 * E)
        t[h + "mlp.c_proj.weight"], t[h + "mlp.c_proj.bias"] = rand(4 * E, E), rand(E)
    t["ln_f.weight"], t["ln_f.bias"] = rand(E, loc=1.0), rand(E)
    return t


def make_numpy_gpt2(tmp_path, *, n_layer=2, n_embd=32, n_head=4, vocab_size=301, n_positions=50, seed=0,
                    with_buffers=True, prefix="", name=None, config_overrides=None):
    """A Hugging Face-layout GPT-2 directory written from NumPy: ``(model_dir, tensors)``.

    ``tensors`` holds the arrays under the names written to ``model.safetensors``.
    """
    model_dir = _fresh_dir(tmp_path, name or f"np-L{n_layer}-E{n_embd}-H{n_head}-V{vocab_size}-C{n_positions}")
    tensors = numpy_gpt2_tensors(n_layer, n_embd, n_head, vocab_size, n_positions, seed, with_buffers)
    tensors = {prefix + k: v for k, v in tensors.items()}
    save_safetensors(model_dir / "model.safetensors", tensors)
    config = _config_json(n_layer, n_embd, n_head, vocab_size, n_positions, config_overrides)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer_files(model_dir, vocab_size)
    return model_dir, tensors


def make_random_gpt2(tmp_path, *, n_layer=2, n_embd=32, n_head=4, vocab_size=301, n_positions=50, seed=0,
                     initializer_range=0.2, name=None, tokenizer=True, **config):
    """A random ``GPT2LMHeadModel`` saved in Hugging Face layout: ``(model_dir, model)``.

    Every parameter is random, LayerNorm gains and all biases included (GPT-2's init would leave
    them ones/zeros, which hides mix-ups); ``initializer_range`` is ten times GPT-2's so that
    greedy generation does not just repeat one token. ``<|endoftext|>`` is the last id and the
    model's bos/eos. Extra keyword arguments go to ``GPT2Config``. Skips the test without torch or
    transformers.
    """
    torch = pytest.importorskip("torch", reason="random GPT-2 checkpoints are built with torch")
    transformers = pytest.importorskip("transformers", reason="random GPT-2 checkpoints are built with transformers")
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, initializer_range=initializer_range,
        **config,
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
            elif ".ln_" in pname or pname.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
    model_dir = _fresh_dir(tmp_path, name or f"hf-L{n_layer}-E{n_embd}-H{n_head}-V{vocab_size}-C{n_positions}-s{seed}")
    try:
        model.save_pretrained(model_dir, safe_serialization=True)
    except TypeError:  # a transformers without the (v4) keyword: safetensors is its only format
        model.save_pretrained(model_dir)
    if tokenizer:
        write_tokenizer_files(model_dir, vocab_size)
    return model_dir, model


def copy_model_dir(src, dst) -> Path:
    """A private copy of a model directory, to damage without touching a shared fixture."""
    dst = Path(dst)
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def random_gpt2(tmp_path_factory):
    """``random_gpt2(**config) -> (model_dir, model)``, built once per config per session.

    The directory is shared: copy it (``copy_model_dir``) before changing any file.
    """
    cache: dict = {}
    root = tmp_path_factory.mktemp("random_gpt2")

    def build(**config):
        key = tuple(sorted(config.items()))
        if key not in cache:
            cache[key] = make_random_gpt2(root, **config)
        return cache[key]

    return build


@pytest.fixture
def numpy_gpt2(tmp_path):
    """``numpy_gpt2(**config) -> (model_dir, tensors)`` in this test's ``tmp_path``."""

    def build(**config):
        return make_numpy_gpt2(tmp_path, **config)

    return build


@pytest.fixture(params=gpt2gen.supported_backends())
def every_backend(request):
    """Runs a test once per instruction set this CPU supports (generic, AVX2, AVX-512)."""
    previous = gpt2gen.backend()
    gpt2gen.set_backend(request.param)
    yield request.param
    gpt2gen.set_backend(previous)
