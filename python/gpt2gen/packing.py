"""Reduced-precision weights: pack a float32 params dict once into bf16 or int8.

Only the matrices are packed (every block's ``c_attn``, ``c_proj``, ``c_fc``, ``mlp.c_proj``
weights and the tied ``wte``, ~98% of GPT-2's parameters); biases, LayerNorm and ``wpe`` stay
float32, and so do activations and accumulation. A packed matrix replaces its array by a dict:

- ``{"format": "bf16", "data": uint16[...]}``: the high half of each float32, rounded to nearest
  even (half the bytes);
- ``{"format": "int8", "data": int8[...], "scales": float32[...]}``: symmetric quantization with
  one scale per block of ``QUANT_BLOCK`` values along the dimension the product reduces over
  (the rows of a ``W[in, out]``, the columns of ``wte``): ``value ≈ data · scale`` (a quarter of
  the bytes, plus 1/32 of float32 scales).

The engine reads the packed arrays in place, like any other parameter.
"""

from __future__ import annotations

import numpy as np

FORMATS = ("bf16", "int8")
QUANT_BLOCK = 32  # must match kQuantBlock in csrc/model.hpp


def float_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → bf16 bits (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, (bits >> 16) | np.uint32(0x40), rounded)
    return rounded.astype(np.uint16)


def bf16_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def quantize_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, scales): blocks of QUANT_BLOCK values along ``axis`` share scale = max|w| / 127."""
    w = np.moveaxis(np.asarray(w, dtype=np.float32), axis, -1)
    n = w.shape[-1]
    n_blocks = -(-n // QUANT_BLOCK)
    padded = np.zeros(w.shape[:-1] + (n_blocks * QUANT_BLOCK,), np.float32)
    padded[..., :n] = w
    blocks = padded.reshape(w.shape[:-1] + (n_blocks, QUANT_BLOCK))
    scales = np.abs(blocks).max(axis=-1) / 127
    safe = np.where(scales > 0, scales, 1)
    q = np.clip(np.rint(blocks / safe[..., None]), -127, 127).astype(np.int8)
    q = q.reshape(padded.shape)[..., :n]
    return (np.ascontiguousarray(np.moveaxis(q, -1, axis)),
            np.ascontiguousarray(np.moveaxis(scales.astype(np.float32), -1, axis)))


def dequantize_int8(q: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    expanded = np.repeat(scales, QUANT_BLOCK, axis=axis)
    index = [slice(None)] * q.ndim
    index[axis] = slice(0, q.shape[axis])
    return q.astype(np.float32) * expanded[tuple(index)]


def pack_matrix(w: np.ndarray, dtype: str, reduce_axis: int) -> dict:
    if dtype == "bf16":
        return {"format": "bf16", "data": float_to_bf16(w)}
    q, scales = quantize_int8(w, reduce_axis)
    return {"format": "int8", "data": q, "scales": scales}


def unpack_matrix(m, reduce_axis: int) -> np.ndarray:
    """The float32 values a (possibly packed) matrix stands for."""
    if not isinstance(m, dict):
        return m
    if m["format"] == "bf16":
        return bf16_to_float(m["data"])
    return dequantize_int8(m["data"], m["scales"], reduce_axis)


def _map_matrices(params: dict, wte_fn, linear_fn) -> dict:
    """A new params dict whose matrices are replaced; every other array is shared, not copied."""

    def linear(lin):
        return {**lin, "w": linear_fn(lin["w"])}

    return {
        **params,
        "wte": wte_fn(params["wte"]),
        "blocks": [
            {**block,
             "attn": {**block["attn"], "c_attn": linear(block["attn"]["c_attn"]),
                      "c_proj": linear(block["attn"]["c_proj"])},
             "mlp": {**block["mlp"], "c_fc": linear(block["mlp"]["c_fc"]),
                     "c_proj": linear(block["mlp"]["c_proj"])}}
            for block in params["blocks"]
        ],
    }


def pack_params(params: dict, dtype: str) -> dict:
    """A copy of a float32 params dict with its matrices packed as ``dtype`` ("bf16" or "int8")."""
    if dtype not in FORMATS:
        raise ValueError(f"dtype must be one of {', '.join(FORMATS)}, got {dtype!r}")
    wte = params.get("wte") if isinstance(params, dict) else None
    if not isinstance(wte, np.ndarray) or wte.dtype != np.float32:
        raise TypeError("pack_params takes float32 parameters (an unpacked picoGPT params dict)")
    return _map_matrices(params, lambda w: pack_matrix(w, dtype, reduce_axis=1),
                         lambda w: pack_matrix(w, dtype, reduce_axis=0))


def unpack_params(params: dict) -> dict:
    """The float32 parameters a packed params dict stands for (for the NumPy reference)."""
    return _map_matrices(params, lambda m: unpack_matrix(m, reduce_axis=1),
                         lambda m: unpack_matrix(m, reduce_axis=0))
