"""Load GPT-2 checkpoints in Hugging Face layout into picoGPT's ``(encoder, hparams, params)``.

A model directory holds ``config.json``, ``model.safetensors``, ``vocab.json`` and ``merges.txt``
(what ``GPT2LMHeadModel.save_pretrained`` plus the tokenizer files give, and what the Hub's
``openai-community/gpt2*`` repositories contain). ``load_pretrained`` also accepts a model name
(``gpt2`` ... ``gpt2-xl`` or picoGPT's ``124M`` ... ``1558M``), downloaded once with
``huggingface_hub``.

Weights
    ``model.safetensors`` is parsed here, not by the ``safetensors`` package: the header is
    validated against the file before anything is allocated, and every float32 (``F32``) tensor
    is returned as a read-only NumPy view of one ``mmap`` of the file, so loading copies nothing
    and the pages are read (and shared with the page cache) only when the engine touches them.
    ``F16``, ``BF16`` and ``F64`` tensors are converted once to float32: those are copies.
    Sharded checkpoints (``model.safetensors.index.json``) are read the same way, shard by shard.

    Pickled ``pytorch_model.bin`` files are refused unless ``allow_pickle=True`` (unpickling a
    file can run arbitrary code); then ``torch.load(..., weights_only=True)`` reads them.

Every problem with a file is a ``CheckpointError`` (a ``ValueError``) whose message names the file
and, where it applies, the tensor (its checkpoint name and its key path in ``params``).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

__all__ = [
    "CheckpointError",
    "CheckpointDownloadError",
    "MODEL_REPOS",
    "MODEL_ALIASES",
    "MODEL_FILES",
    "SafetensorsFile",
    "checkpoint_to_params",
    "expected_tensors",
    "load_checkpoint",
    "load_hparams",
    "load_pretrained",
    "open_safetensors",
    "resolve_model_dir",
]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A checkpoint, config or tokenizer file that cannot be loaded (the message says why)."""


class CheckpointDownloadError(CheckpointError, OSError):
    """A named model could not be downloaded; the message says what to fetch by hand, and where."""


# Model names -> Hub repositories. picoGPT's sizes are aliases of the Hugging Face names.
MODEL_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
MODEL_ALIASES = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}
# Exactly the files a download fetches (and that a local directory should hold).
MODEL_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")

# The safetensors package refuses headers above 100 MB; so do we (GPT-2 XL's is ~60 kB).
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype -> (NumPy little-endian dtype or None when NumPy has none, bytes per element)
_DTYPES: dict[str, tuple[Optional[str], int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": (None, 2),
    "F8_E4M3": (None, 1),
    "F8_E5M2": (None, 1),
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U64": ("<u8", 8),
    "U32": ("<u4", 4),
    "U16": ("<u2", 2),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


# --------------------------------------------------------------------------------------------
# safetensors


_MAX_MISSING_COUNTED = 10_000

# NumPy's limit on dimensions; every array must also count its elements in 62 bits.
MAX_RANK = 64


def _representable(shape) -> bool:
    """Whether NumPy can make an array of this shape (the product of its non-zero sizes < 2**62),
    decided without multiplying huge integers."""
    size = 1
    for d in shape:
        size *= max(d, 1)
        if size >= 2**62:
            return False
    return True


class _Entry:
    __slots__ = ("dtype", "shape", "begin", "end")

    def __init__(self, dtype: str, shape: tuple[int, ...], begin: int, end: int):
        self.dtype, self.shape, self.begin, self.end = dtype, shape, begin, end


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _no_duplicate_keys(path: Path) -> Callable[[list], dict]:
    def hook(pairs: list) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise CheckpointError(f"{path}: the safetensors header lists {key!r} twice")
            out[key] = value
        return out

    return hook


def _parse_header(raw: bytes, path: Path, data_size: int) -> tuple[dict[str, _Entry], dict[str, str]]:
    """Validate a safetensors JSON header against the size of the data section that follows it."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys(path))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, huge ints
        raise CheckpointError(
            f"{path}: the safetensors header ({len(raw)} bytes after the 8-byte length) is not "
            f"valid UTF-8 JSON ({e}); the file is corrupt or not a safetensors file"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path}: the safetensors header must be a JSON object, got {type(header).__name__}"
        )
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{path}: '__metadata__' must be an object of string values, got {metadata!r}")

    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            got = sorted(info) if isinstance(info, dict) else type(info).__name__
            raise CheckpointError(f"{where}: expected exactly the keys dtype, shape, data_offsets; got {got}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise CheckpointError(
                f"{where}: unknown dtype {dtype!r} (known: {', '.join(_DTYPES)})"
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if len(shape) > MAX_RANK:
            raise CheckpointError(f"{where}: shape has {len(shape)} dimensions, more than {MAX_RANK}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        begin, end = offsets
        if end > data_size:
            raise CheckpointError(
                f"{where}: data_offsets [{begin}, {end}] reach beyond the end of the file, whose data "
                f"section has only {data_size} bytes (the file is truncated or its header is wrong)"
            )
        # Python integers: a lying shape such as [2**40, 2**40] cannot overflow, and nothing
        # is ever allocated from it since it must match offsets already checked against the file.
        nbytes = math.prod(shape) * _DTYPES[dtype][1]
        if nbytes != end - begin:
            raise CheckpointError(
                f"{where}: dtype {dtype} with shape {shape} needs {nbytes} bytes, but data_offsets "
                f"[{begin}, {end}] hold {end - begin} bytes"
            )
        if not _representable(shape):
            raise CheckpointError(f"{where}: shape {shape} has more than 2**62 elements")
        entries[name] = _Entry(dtype, tuple(shape), begin, end)

    previous: Optional[tuple[str, _Entry]] = None
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin == entry.end:
            continue  # empty tensors occupy no bytes
        if previous is not None and entry.begin < previous[1].end:
            raise CheckpointError(
                f"{path}: tensors {previous[0]!r} (bytes [{previous[1].begin}, {previous[1].end}]) and "
                f"{name!r} (bytes [{entry.begin}, {entry.end}]) overlap"
            )
        previous = (name, entry)
    return entries, metadata


class SafetensorsFile(Mapping):
    """A validated ``.safetensors`` file whose items are float32 NumPy arrays.

    The header is checked completely when the file is opened. ``F32`` tensors are read-only views
    of one read-only ``mmap`` of the file (copied only if misaligned, which files written by
    safetensors never are); ``F16``/``BF16``/``F64`` tensors are converted to float32 copies on
    access. Other dtypes are listed but raise ``CheckpointError`` when accessed.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open: {e}") from e
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CheckpointError(
                    f"{self.path}: truncated: {size} bytes, shorter than the 8-byte header length"
                )
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{self.path}: the header length field says {header_len} bytes, more than the "
                    f"{MAX_HEADER_BYTES}-byte limit; this is not a valid safetensors file"
                )
            if header_len > size - 8:
                raise CheckpointError(
                    f"{self.path}: the header length field says {header_len} bytes but the file has "
                    f"only {size - 8} bytes after it (the file is truncated or not safetensors)"
                )
            raw = f.read(header_len)
            if len(raw) != header_len:
                raise CheckpointError(f"{self.path}: truncated while reading the header")
            self.data_offset = 8 + header_len
            self.file_size = size
            self._entries, self.metadata = _parse_header(raw, self.path, size - self.data_offset)
            # One read-only mapping of the whole file; the arrays keep it alive through `.base`.
            self.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        return self._array(name, entry)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def dtype_of(self, name: str) -> str:
        return self._entries[name].dtype

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def _array(self, name: str, entry: _Entry) -> np.ndarray:
        if entry.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has dtype {entry.dtype}; weights must be one of "
                f"{', '.join(_FLOAT_DTYPES)}"
            )
        count = math.prod(entry.shape)
        if count == 0:
            return np.zeros(entry.shape, dtype=np.float32)
        offset = self.data_offset + entry.begin
        if entry.dtype == "BF16":  # the top half of a float32
            bits = np.frombuffer(self.mmap, dtype="<u2", count=count, offset=offset)
            out = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            out = np.frombuffer(self.mmap, dtype=_DTYPES[entry.dtype][0], count=count, offset=offset)
            if entry.dtype != "F32":
                out = out.astype(np.float32)  # the documented conversion copy
            elif not out.flags.aligned or sys.byteorder != "little":
                out = out.astype(np.float32)  # the engine needs aligned, native-order floats
        return out.reshape(entry.shape)


def open_safetensors(path: PathLike) -> SafetensorsFile:
    """Open and validate one ``.safetensors`` file (see ``SafetensorsFile``)."""
    return SafetensorsFile(path)


class _ShardedTensors(Mapping):
    """The tensors of a sharded checkpoint, from its ``*.index.json`` weight map."""

    def __init__(self, index_path: Path, open_shard: Callable[[Path], Mapping]):
        self.path = index_path
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{index_path}: cannot read the shard index: {e}") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CheckpointError(f"{index_path}: expected an object with a 'weight_map' of tensor name -> file name")
        shards: dict[str, Mapping] = {}
        for filename in sorted(set(weight_map.values())):
            if Path(filename).name != filename or filename in (".", ".."):
                raise CheckpointError(f"{index_path}: shard file name {filename!r} must be a plain file name")
            shard_path = index_path.parent / filename
            if not shard_path.is_file():
                raise CheckpointError(f"{index_path}: shard {filename!r} is missing from {index_path.parent}")
            shards[filename] = open_shard(shard_path)
        self._where: dict[str, Mapping] = {}
        for name, filename in weight_map.items():
            if name not in shards[filename]:
                raise CheckpointError(f"{index_path}: tensor {name!r} is not in its shard {filename!r}")
            self._where[name] = shards[filename]
        for filename, shard in shards.items():
            for name in shard:
                if weight_map.get(name) != filename:
                    raise CheckpointError(
                        f"{index_path}: shard {filename!r} has tensor {name!r}, which the weight map "
                        f"{'puts in ' + repr(weight_map[name]) if name in weight_map else 'does not list'}"
                    )

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


# --------------------------------------------------------------------------------------------
# pickled PyTorch checkpoints (opt-in)


class _TorchTensors(Mapping):
    """A torch state dict whose items are float32 NumPy arrays (sharing memory where possible)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{path} is a pickled PyTorch checkpoint; reading it needs torch (pip install torch), "
                "or convert it to model.safetensors on a machine that has torch"
            ) from None
        self._torch = torch
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # e.g. the legacy (non-zip) format cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for corrupt or unsafe files
            raise CheckpointError(f"{path}: torch.load(weights_only=True) failed: {e}") from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise CheckpointError(f"{path}: expected a state dict of tensor name -> tensor")
        self._state = state

    def __getitem__(self, name: str) -> np.ndarray:
        t = self._state[name]
        if not t.is_floating_point():
            raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {t.dtype}; weights must be floating point")
        return t.detach().to(self._torch.float32).contiguous().numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def _pickle_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path.parent}: only a pickled PyTorch checkpoint ({path.name}) was found, and it is not "
        "loaded by default because unpickling a file can execute arbitrary code. Either convert it "
        "once to model.safetensors (e.g. with transformers: "
        "GPT2LMHeadModel.from_pretrained(dir).save_pretrained(dir)), or, if you trust the file, pass "
        "allow_pickle=True to read it with torch.load(..., weights_only=True) (needs torch)."
    )


# --------------------------------------------------------------------------------------------
# mapping checkpoint names -> picoGPT's params


_IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers, not weights
_PREFIX = "transformer."


def expected_tensors(hparams: Mapping) -> Iterator[tuple[str, tuple, tuple[int, ...]]]:
    """Every weight the engine needs: ``(checkpoint name without prefix, params key path, shape)``.

    A key path is a tuple such as ``("blocks", 3, "attn", "c_attn", "w")``. A generator: a
    config's n_layer is not trusted to size anything before the tensors are checked.
    """
    V, C, E = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]
    yield "wte.weight", ("wte",), (V, E)
    yield "wpe.weight", ("wpe",), (C, E)
    linears = {"attn.c_attn": (E, 3 * E), "attn.c_proj": (E, E), "mlp.c_fc": (E, 4 * E), "mlp.c_proj": (4 * E, E)}
    for i in range(hparams["n_layer"]):
        for ln in ("ln_1", "ln_2"):
            yield f"h.{i}.{ln}.weight", ("blocks", i, ln, "g"), (E,)
            yield f"h.{i}.{ln}.bias", ("blocks", i, ln, "b"), (E,)
        for name, (d_in, d_out) in linears.items():
            sub = tuple(name.split("."))
            yield f"h.{i}.{name}.weight", ("blocks", i) + sub + ("w",), (d_in, d_out)
            yield f"h.{i}.{name}.bias", ("blocks", i) + sub + ("b",), (d_out,)
    yield "ln_f.weight", ("ln_f", "g"), (E,)
    yield "ln_f.bias", ("ln_f", "b"), (E,)


def _key_path(path: tuple) -> str:
    head, *rest = path
    return str(head) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def checkpoint_to_params(
    tensors: Mapping[str, Any],
    hparams: Mapping,
    *,
    source: str = "checkpoint",
    dtype: Any = np.float32,
) -> dict:
    """Map Hugging Face GPT-2 tensor names to picoGPT's params dict, checking every tensor.

    ``tensors`` maps names (``wte.weight``, ``h.0.attn.c_attn.weight``, ... with or without the
    ``transformer.`` prefix) to arrays; ``hparams`` is picoGPT's dict. The ``h.*.attn.bias`` /
    ``h.*.attn.masked_bias`` buffers are ignored, and so is ``lm_head.weight`` when it equals
    ``wte.weight`` (the engine ties the output head to ``wte``); an untied head, a missing,
    mis-shaped or unexpected tensor raises ``CheckpointError`` naming it. Arrays that already are
    C-contiguous, aligned and of ``dtype`` are used as they are (views stay views).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise CheckpointError(f"dtype must be float32, float64, 'bf16' or 'int8', got {dtype}")
    short_to_full: dict[str, str] = {}
    for full in tensors:
        short = full[len(_PREFIX):] if full.startswith(_PREFIX) else full
        if short in short_to_full:
            raise CheckpointError(f"{source}: both {short_to_full[short]!r} and {full!r} are present")
        short_to_full[short] = full
    prefixed = any(name.startswith(_PREFIX) for name in tensors)

    def display(short: str) -> str:  # the name as this checkpoint spells it
        if short in short_to_full:
            return short_to_full[short]
        return _PREFIX + short if prefixed and short != "lm_head.weight" else short

    missing, n_missing = [], 0
    for s, p, shape in expected_tensors(hparams):
        if s not in short_to_full:
            n_missing += 1
            if len(missing) < 8:
                missing.append((s, p, shape))
            elif n_missing > _MAX_MISSING_COUNTED:  # n_layer far beyond the file: stop counting
                break
    if missing:
        listed = "; ".join(
            f"{display(s)!r} (params {_key_path(p)}, shape {_shape_str(shape)})" for s, p, shape in missing
        )
        more = ("" if n_missing <= 8 else f"; and {n_missing - 8} more" if n_missing <= _MAX_MISSING_COUNTED
                else f"; and more than {_MAX_MISSING_COUNTED - 8} more")
        raise CheckpointError(
            f"{source}: missing tensor{'s' if len(missing) > 1 else ''} {listed}{more} "
            f"(n_layer={hparams['n_layer']} from the config)"
        )
    expected = list(expected_tensors(hparams))  # every one is in the file: its size is bounded
    known = {s for s, _, _ in expected}
    unexpected = [
        full for short, full in short_to_full.items()
        if short not in known and short != "lm_head.weight" and not _IGNORED.fullmatch(short)
    ]
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor{'s' if len(unexpected) > 1 else ''} "
            f"{', '.join(repr(u) for u in unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}; "
            "this is not a plain GPT-2 language model checkpoint, or config.json does not match it "
            f"(n_layer={hparams['n_layer']})"
        )

    params: dict = {"blocks": [{} for _ in range(hparams["n_layer"])]}
    for short, path, shape in expected:
        arr = tensors[short_to_full[short]]
        where = f"{source}: tensor {display(short)!r} (params {_key_path(path)})"
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
        if tuple(arr.shape) != shape:
            raise CheckpointError(
                f"{where} has shape {_shape_str(arr.shape)}, expected {_shape_str(shape)} from the config "
                f"(n_vocab={hparams['n_vocab']}, n_ctx={hparams['n_ctx']}, n_embd={hparams['n_embd']})"
            )
        if arr.dtype.kind != "f":
            raise CheckpointError(f"{where} has dtype {arr.dtype}; weights must be floating point")
        arr = np.require(arr, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])
        node = params
        for key in path[:-1]:
            node = node[key] if isinstance(key, int) else node.setdefault(key, {})
        node[path[-1]] = arr

    if "lm_head.weight" in short_to_full:
        head = tensors[short_to_full["lm_head.weight"]]
        wte = params["wte"]
        tied = tuple(np.shape(head)) == wte.shape and (
            np.shares_memory(head, wte) or np.array_equal(np.asarray(head, dtype=dtype), wte, equal_nan=True)
        )
        if not tied:
            raise CheckpointError(
                f"{source}: 'lm_head.weight' differs from {display('wte.weight')!r}; gpt2gen ties the "
                "output projection to the token embedding (as GPT-2 does), so a checkpoint with a "
                "separately trained head cannot be loaded"
            )
    return params


# --------------------------------------------------------------------------------------------
# config.json


def _read_config(model_dir: Path) -> tuple[dict, dict]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no config.json (expected the Hugging Face files {', '.join(MODEL_FILES)})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")

    def refuse(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: {key}={config.get(key)!r} is not supported: {why}")

    model_type = config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise refuse("model_type", "only GPT-2 ('gpt2') checkpoints can be loaded")
    hparams = {}
    for ours, theirs in (("n_vocab", "vocab_size"), ("n_ctx", "n_positions"), ("n_embd", "n_embd"),
                         ("n_head", "n_head"), ("n_layer", "n_layer")):
        if theirs not in config:
            raise CheckpointError(f"{path}: missing {theirs!r} (needed for hparams[{ours!r}])")
        value = config[theirs]
        minimum = 0 if theirs == "n_layer" else 1
        if not _is_int(value) or value < minimum:
            raise CheckpointError(f"{path}: {theirs}={value!r} must be an integer >= {minimum}")
        hparams[ours] = value
    if hparams["n_embd"] % hparams["n_head"]:
        raise CheckpointError(f"{path}: n_embd={hparams['n_embd']} is not a multiple of n_head={hparams['n_head']}")

    if config.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise refuse("layer_norm_epsilon", "the engine's LayerNorm uses GPT-2's epsilon 1e-05")
    if config.get("activation_function", "gelu_new") != "gelu_new":
        raise refuse("activation_function", "the engine implements GPT-2's tanh GELU ('gelu_new') only")
    for key, why in (
        ("scale_attn_by_inverse_layer_idx", "the engine does not scale attention by the layer index"),
        ("reorder_and_upcast_attn", "the engine does not implement the reordered, upcast attention"),
        ("add_cross_attention", "the engine has no cross-attention"),
    ):
        if config.get(key, False):
            raise refuse(key, why)
    if not config.get("scale_attn_weights", True):
        raise refuse("scale_attn_weights", "the engine always scales attention scores by 1/sqrt(head_dim)")
    if config.get("n_inner") not in (None, 4 * hparams["n_embd"]):
        raise refuse("n_inner", f"the engine's MLP width is 4*n_embd = {4 * hparams['n_embd']}")
    return hparams, config


def load_hparams(model_dir: PathLike) -> dict:
    """picoGPT's hparams from ``config.json``, refusing settings the engine does not implement."""
    return _read_config(Path(model_dir))[0]


# --------------------------------------------------------------------------------------------
# directories and downloads


def _open_weights(model_dir: Path, allow_pickle: bool) -> tuple[Mapping, str]:
    candidates = [
        (model_dir / "model.safetensors", lambda p: SafetensorsFile(p)),
        (model_dir / "model.safetensors.index.json", lambda p: _ShardedTensors(p, SafetensorsFile)),
    ]
    for path, opener in candidates:
        if path.is_file():
            return opener(path), str(path)
    for path, sharded in ((model_dir / "pytorch_model.bin", False), (model_dir / "pytorch_model.bin.index.json", True)):
        if path.is_file():
            if not allow_pickle:
                raise _pickle_refusal(path)
            if sharded:
                return _ShardedTensors(path, _TorchTensors), str(path)
            return _TorchTensors(path), str(path)
    raise CheckpointError(
        f"{model_dir}: no weights found: expected model.safetensors (or model.safetensors.index.json "
        "with its shards) next to config.json"
    )


def load_checkpoint(model_dir: PathLike, *, allow_pickle: bool = False, dtype: Any = np.float32) -> tuple[dict, dict]:
    """``(hparams, params)`` from a model directory; ``load_pretrained`` without the tokenizer."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a directory")
    hparams, config = _read_config(model_dir)
    tensors, source = _open_weights(model_dir, allow_pickle)
    if config.get("tie_word_embeddings", True) is False and "lm_head.weight" not in tensors:
        raise CheckpointError(
            f"{model_dir / 'config.json'}: tie_word_embeddings=false but {source} has no lm_head.weight; "
            "gpt2gen ties the output projection to wte and cannot load a separate head"
        )
    params = checkpoint_to_params(tensors, hparams, source=source, dtype=dtype)
    return hparams, params


def _canonical_name(name: str) -> Optional[str]:
    name = MODEL_ALIASES.get(name, name)
    if name in MODEL_REPOS:
        return name
    for short, repo in MODEL_REPOS.items():
        if name == repo:
            return short
    return None


def _download_help(name: str, repo_id: str, target: Optional[Path]) -> str:
    where = target if target is not None else Path("models") / name
    return (
        f"To use '{name}' without network access, download these files from "
        f"https://huggingface.co/{repo_id}/tree/main :\n    {', '.join(MODEL_FILES)}\n"
        f"put them into one directory, e.g. {where}, and pass that directory instead of the name "
        f"(load_pretrained({str(where)!r}), gpt2gen --model {where})"
        + ("" if target is not None else f" (or pass models_dir='models': files already in models/{name} are used as they are)")
    )


def _download(name: str, models_dir: Optional[PathLike]) -> Path:
    repo_id = MODEL_REPOS[name]
    target = Path(models_dir).expanduser() / name if models_dir is not None else None
    if target is not None and all((target / f).is_file() for f in MODEL_FILES):
        return target  # downloaded before: no network access at all
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointDownloadError(
            f"downloading '{name}' (Hugging Face repo {repo_id!r}) needs huggingface_hub "
            f"(pip install huggingface_hub).\n{_download_help(name, repo_id, target)}"
        ) from None
    kwargs: dict = {"allow_patterns": list(MODEL_FILES)}
    if target is not None:
        kwargs["local_dir"] = str(target)
    try:
        path = Path(huggingface_hub.snapshot_download(repo_id, **kwargs))
    except Exception as e:  # offline, no route, HTTP errors, disk full, ...: all get the same help
        reason = (str(e).strip().splitlines() or [""])[0][:160]  # the hub's messages run long
        raise CheckpointDownloadError(
            f"could not download '{name}' from the Hugging Face Hub (repo {repo_id!r}): "
            f"{type(e).__name__}: {reason}\n{_download_help(name, repo_id, target)}"
        ) from e
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointDownloadError(
            f"the download of '{name}' (repo {repo_id!r}) into {path} lacks {', '.join(missing)}.\n"
            f"{_download_help(name, repo_id, target)}"
        )
    return path


def resolve_model_dir(name_or_path: PathLike, models_dir: Optional[PathLike] = None) -> Path:
    """An existing directory as it is; a known model name downloaded (once) and its directory."""
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        return path
    name = _canonical_name(os.fspath(name_or_path))
    if name is None:
        known = ", ".join(list(MODEL_REPOS) + list(MODEL_ALIASES))
        raise CheckpointError(
            f"{os.fspath(name_or_path)!r} is neither an existing directory nor a known model name ({known})"
        )
    return _download(name, models_dir)


def load_pretrained(
    name_or_path: PathLike,
    models_dir: Optional[PathLike] = None,
    *,
    allow_pickle: bool = False,
    dtype: Any = np.float32,
):
    """``(encoder, hparams, params)`` as picoGPT's ``load_encoder_hparams_and_params``.

    ``dtype``: float32 (the default, mapped from the file), float64 (a converted copy), or
    ``"bf16"`` / ``"int8"``: the matrices packed once by ``gpt2gen.pack_params``.

    ``name_or_path``: a directory in Hugging Face layout (``config.json``, ``model.safetensors``,
    ``vocab.json``, ``merges.txt``), or one of ``gpt2``, ``gpt2-medium``, ``gpt2-large``,
    ``gpt2-xl`` (or ``124M``, ``355M``, ``774M``, ``1558M``), downloaded once with
    ``huggingface_hub`` into its cache, or into ``models_dir/<name>`` when ``models_dir`` is given
    (files already there are used without network access). An existing directory wins over a
    name. Raises ``CheckpointError`` (``CheckpointDownloadError`` when a download fails).
    """
    from .packing import FORMATS, pack_params

    model_dir = resolve_model_dir(name_or_path, models_dir)
    packed = dtype if isinstance(dtype, str) and dtype in FORMATS else None
    hparams, params = load_checkpoint(model_dir, allow_pickle=allow_pickle,
                                      dtype=np.float32 if packed else dtype)
    if packed:
        params = pack_params(params, packed)
    encoder = _load_encoder(model_dir, hparams)
    return encoder, hparams, params


def _load_encoder(model_dir: Path, hparams: dict):
    files = [model_dir / "vocab.json", model_dir / "merges.txt"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{model_dir}: tokenizer file{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing")
    from .tokenizer import Tokenizer  # lazily: the weights can be loaded without it

    try:
        encoder = Tokenizer.from_files(*files)
    except (ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{files[0]} / {files[1].name}: cannot load the tokenizer: {e}") from None
    if encoder.n_vocab > hparams["n_vocab"]:
        raise CheckpointError(
            f"{files[0]}: the tokenizer has ids up to {encoder.n_vocab - 1} but the model's "
            f"vocab_size is {hparams['n_vocab']}"
        )
    return encoder
