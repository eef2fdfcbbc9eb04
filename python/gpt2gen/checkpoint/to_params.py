"""Hugging Face GPT-2 tensor names -> picoGPT's params tree, checking every tensor on the way.

``checkpoint_to_params`` runs four named steps: read the checkpoint's names (with or without
the ``transformer.`` prefix), require every tensor the config implies and nothing else, place
each one (shape and dtype checked) at its key path, and check that the output head is tied to
``wte``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .errors import CheckpointError

_IGNORED = re.compile(
    r"h\.\d+\.attn\.(bias|masked_bias)"
)  # causal-mask buffers, not weights
_PREFIX = "transformer."
_HEAD = "lm_head.weight"
_LISTED = 8  # missing or unexpected tensors named in one message
# Counting missing tensors stops here: a config's n_layer may be far beyond the file.
_MAX_MISSING_COUNTED = 10_000

# The dtypes a params tree is built in (the engine's two float types); packed formats are made
# from float32 by gpt2gen.pack_params.
PARAMS_DTYPES = (np.float32, np.float64)


def expected_tensors(hparams: Mapping) -> Iterator[tuple[str, tuple, tuple[int, ...]]]:
    """Every weight the engine needs: ``(checkpoint name without prefix, params key path, shape)``.

    A key path is a tuple such as ``("blocks", 3, "attn", "c_attn", "w")``. A generator: a
    config's n_layer is not trusted to size anything before the tensors are checked.
    """
    V, C, E = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]
    yield "wte.weight", ("wte",), (V, E)
    yield "wpe.weight", ("wpe",), (C, E)
    linears = {
        "attn.c_attn": (E, 3 * E),
        "attn.c_proj": (E, E),
        "mlp.c_fc": (E, 4 * E),
        "mlp.c_proj": (4 * E, E),
    }
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
    dtype = params_dtype(dtype)
    names = _CheckpointNames(tensors, source)
    expected = _require_expected(names, hparams, source)
    _refuse_unexpected(names, expected, hparams, source)
    params = _place_tensors(tensors, names, expected, hparams, source, dtype)
    _require_tied_head(tensors, names, params["wte"], source, dtype)
    return params


def params_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy float type the params tree can be built in, or a ``CheckpointError``
    naming the choices (also for names NumPy does not know, such as ``"fp16"``)."""
    try:
        resolved = np.dtype(dtype)
    except (TypeError, ValueError):
        resolved = None
    if resolved is None or resolved not in PARAMS_DTYPES:
        got = resolved if resolved is not None else repr(dtype)
        raise CheckpointError(f"dtype must be float32, float64, 'bf16', 'int8' or 'int4', got {got}")
    return resolved


class _CheckpointNames:
    """The checkpoint's tensor names without the ``transformer.`` prefix, and back again."""

    def __init__(self, tensors: Mapping[str, Any], source: str):
        self.short_to_full: dict[str, str] = {}
        for full in tensors:
            short = full[len(_PREFIX) :] if full.startswith(_PREFIX) else full
            if short in self.short_to_full:
                raise CheckpointError(
                    f"{source}: both {self.short_to_full[short]!r} and {full!r} are present"
                )
            self.short_to_full[short] = full
        self.prefixed = any(name.startswith(_PREFIX) for name in tensors)

    def __contains__(self, short: str) -> bool:
        return short in self.short_to_full

    def full(self, short: str) -> str:
        return self.short_to_full[short]

    def display(self, short: str) -> str:
        """The name as this checkpoint spells it (or would, for a missing tensor)."""
        if short in self.short_to_full:
            return self.short_to_full[short]
        return _PREFIX + short if self.prefixed and short != _HEAD else short


def _require_expected(names: _CheckpointNames, hparams: Mapping, source: str) -> list:
    """Every expected tensor, as a list: all are present, so its length is bounded by the file."""
    missing, n_missing = [], 0
    for short, path, shape in expected_tensors(hparams):
        if short not in names:
            n_missing += 1
            if len(missing) < _LISTED:
                missing.append((short, path, shape))
            elif (
                n_missing > _MAX_MISSING_COUNTED
            ):  # n_layer far beyond the file: stop counting
                break
    if missing:
        listed = "; ".join(
            f"{names.display(s)!r} (params {_key_path(p)}, shape {_shape_str(shape)})"
            for s, p, shape in missing
        )
        if n_missing <= _LISTED:
            more = ""
        elif n_missing <= _MAX_MISSING_COUNTED:
            more = f"; and {n_missing - _LISTED} more"
        else:
            more = f"; and more than {_MAX_MISSING_COUNTED - _LISTED} more"
        raise CheckpointError(
            f"{source}: missing tensor{'s' if len(missing) > 1 else ''} {listed}{more} "
            f"(n_layer={hparams['n_layer']} from the config)"
        )
    return list(expected_tensors(hparams))


def _refuse_unexpected(
    names: _CheckpointNames, expected: list, hparams: Mapping, source: str
):
    known = {short for short, _, _ in expected}
    unexpected = [
        full
        for short, full in names.short_to_full.items()
        if short not in known and short != _HEAD and not _IGNORED.fullmatch(short)
    ]
    if unexpected:
        listed = ", ".join(repr(u) for u in unexpected[:_LISTED])
        raise CheckpointError(
            f"{source}: unexpected tensor{'s' if len(unexpected) > 1 else ''} "
            f"{listed}{' ...' if len(unexpected) > _LISTED else ''}; "
            "this is not a plain GPT-2 language model checkpoint, or config.json does not match it "
            f"(n_layer={hparams['n_layer']})"
        )


def _place_tensors(tensors, names, expected, hparams, source, dtype) -> dict:
    """The params tree: each expected tensor, shape and dtype checked, at its key path."""
    params: dict = {"blocks": [{} for _ in range(hparams["n_layer"])]}
    for short, path, shape in expected:
        arr = tensors[names.full(short)]
        where = f"{source}: tensor {names.display(short)!r} (params {_key_path(path)})"
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
        if tuple(arr.shape) != shape:
            raise CheckpointError(
                f"{where} has shape {_shape_str(arr.shape)}, expected {_shape_str(shape)} from "
                f"the config (n_vocab={hparams['n_vocab']}, n_ctx={hparams['n_ctx']}, "
                f"n_embd={hparams['n_embd']})"
            )
        if arr.dtype.kind != "f":
            raise CheckpointError(
                f"{where} has dtype {arr.dtype}; weights must be floating point"
            )
        arr = np.require(arr, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])
        node = params
        for key in path[:-1]:
            node = node[key] if isinstance(key, int) else node.setdefault(key, {})
        node[path[-1]] = arr
    return params


def _require_tied_head(
    tensors, names: _CheckpointNames, wte: np.ndarray, source: str, dtype
):
    """An ``lm_head.weight`` must be ``wte`` (the same memory or equal values)."""
    if _HEAD not in names:
        return
    head = tensors[names.full(_HEAD)]
    tied = tuple(np.shape(head)) == wte.shape and (
        np.shares_memory(head, wte)
        or np.array_equal(np.asarray(head, dtype=dtype), wte, equal_nan=True)
    )
    if not tied:
        raise CheckpointError(
            f"{source}: 'lm_head.weight' differs from {names.display('wte.weight')!r}; gpt2gen "
            "ties the output projection to the token embedding (as GPT-2 does), so a checkpoint "
            "with a separately trained head cannot be loaded"
        )


def _key_path(path: tuple) -> str:
    head, *rest = path
    return str(head) + "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest
    )


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
