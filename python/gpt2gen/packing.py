"""Reduced-precision weights: pack a float32 params dict once into bf16, int8 or int4.

Only the matrices are packed (every block's ``c_attn``, ``c_proj``, ``c_fc``, ``mlp.c_proj``
weights and the tied ``wte``, ~98% of GPT-2's parameters); biases, LayerNorm and ``wpe`` stay
float32, and so do activations and accumulation. A packed matrix replaces its array by a dict:

- ``{"format": "bf16", "shape": (rows, cols), "data": uint16[...]}``: the high half of each
  float32, rounded to nearest even (half the bytes);
- ``{"format": "int8" | "int4" | "int6", "shape": (rows, cols), "data": uint8[...], "scales": ...}``:
  symmetric quantization with one scale per block of ``QUANT_BLOCK`` values along the dimension
  the product reduces over (the rows of a ``W[in, out]``, the columns of ``wte``):
  ``value = q · scale``, float16 scales (as llama.cpp's q8_0 and q4_0). int8: ``q`` in
  [-127, 127], ``scale = max|w| / 127`` (8.5 bits a weight). int4: ``q`` in [-8, 7] (4.5 bits a
  weight), the scale of least squared error among llama.cpp's q4_0 rule (the block's largest
  magnitude maps to -8) and a few smaller steps. int6: ``q`` in [-32, 31] (6.5 bits a weight),
  its scale chosen the same way; it is the format of the tied ``wte`` of
  ``pack_params(..., "int4")``, as llama.cpp's q4_0 keeps that matrix in 6 bits (q6_K).

Every packed dict names the shape of the matrix it stands for. Its data is laid out for the
engine's kernels (csrc/model.hpp): the matrix seen as ``w[d_in, d_out]`` reducing over ``d_in``
(``wte`` transposed), cut into panels of ``PANEL_COLUMNS`` columns stored one after the other, so
that the engine reads each panel as one sequential stream. bf16 panels hold pairs of consecutive
rows interleaved (``[panels, ceil(d_in / 2), PANEL_COLUMNS, 2]``: one load gives two rows to
widen); quantized ones words of four bytes per column per group of consecutive values of
``d_in``, for integer dot products: one word for 4 (int8) or 8 (int4, two nibbles a byte), three
for 16 (int6: two words of low nibbles, one of the top two bits; csrc/model.hpp).
``unpack_matrix`` gives back the float32 values a packed matrix stands for.

The engine reads the packed arrays in place, like any other parameter.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

FORMATS = ("bf16", "int8", "int4")  # what pack_params packs a model as
MATRIX_FORMATS = ("bf16", "int8", "int4", "int6")  # what a packed matrix may be (int6: int4's wte)
QUANT_BLOCK = 32  # must match kQuantBlock in csrc/model.hpp
PANEL_COLUMNS = 64  # must match kPanelColumns in csrc/model.hpp


class _Quantized(NamedTuple):
    """A quantized format (csrc/model.hpp): q's range, the offset it is stored with, values of
    d_in per group, and words of four bytes per column per group."""
    lo: int
    hi: int
    offset: int
    group: int
    words: int


_QUANTIZED = {"int8": _Quantized(-127, 127, 128, 4, 1), "int4": _Quantized(-8, 7, 8, 8, 1),
              "int6": _Quantized(-32, 31, 32, 16, 3)}


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


def _ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def quantize(w: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(q, scales) of w[d_in, d_out] in blocks of QUANT_BLOCK rows: int8 (q in [-127, 127]), int4
    (q in [-8, 7]) or int6 (q in [-32, 31]); scales [ceil(d_in / QUANT_BLOCK), d_out], float16. q
    is rounded with the float16 scale, so that q·scale is the value the engine uses. Infinite
    weights (or a scale beyond float16) are refused with a ValueError."""
    w = np.asarray(w, dtype=np.float32)
    d_in, d_out = w.shape
    padded = np.zeros((_ceil_to(d_in, QUANT_BLOCK), d_out), np.float32)
    padded[:d_in] = w
    blocks = padded.reshape(-1, QUANT_BLOCK, d_out)
    lo, hi = _QUANTIZED[dtype].lo, _QUANTIZED[dtype].hi
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite scale is refused below
        if dtype == "int8":
            scales = (np.abs(blocks).max(axis=1) / hi).astype(np.float16)
            q = _round(blocks, scales, lo, hi)
        else:
            scales, q = _searched_scales(blocks, lo, hi, _SCALE_FRACTIONS[dtype])
    # A NaN weight makes its block's scale NaN, so the whole block stands for NaN and reaches its
    # column's outputs, as the float32 product would; its q are stored as 0.
    q = np.where(np.isnan(q), 0, q)
    if np.isinf(scales).any():
        largest = 65504 * max(-lo, hi)
        raise ValueError(f"weights beyond ±{largest:.4g} (or infinite) do not fit {dtype}'s float16 block scales")
    return q.astype(np.int8).reshape(padded.shape)[:d_in], scales


def _round(blocks: np.ndarray, scales: np.ndarray, lo: int, hi: int) -> np.ndarray:
    step = scales.astype(np.float32)
    return np.clip(np.rint(blocks / np.where(step != 0, step, 1)[:, None, :]), lo, hi)


# int4 and int6 scales tried per block, as fractions of q4_0's rule (the largest magnitude → the
# most negative q): a smaller step clips the largest value by a little and places the others
# more finely.
_SCALE_FRACTIONS = {"int4": (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65),
                    "int6": (1.0, 0.97, 0.94, 0.91, 0.88)}


def _searched_scales(blocks: np.ndarray, lo: int, hi: int, fractions) -> tuple[np.ndarray, np.ndarray]:
    """(float16 scales, q) per block: of llama.cpp's q4_0 rule and the fractions of it, the scale
    with the least squared error (int4 on structured weights with outlier rows: mean KL to
    float32 fell from 13.9 to 10.6; on random ones it is unchanged)."""
    index = np.abs(blocks).argmax(axis=1)[:, None, :]
    extreme = np.take_along_axis(blocks, index, axis=1)[:, 0, :] / lo
    best = None
    for fraction in fractions:
        scales = (extreme * np.float32(fraction)).astype(np.float16)
        q = _round(blocks, scales, lo, hi)
        error = np.square(q * scales.astype(np.float32)[:, None, :] - blocks).sum(axis=1)
        if best is None:
            best = [error, scales, q]
            continue
        better = error < best[0]
        best[0] = np.where(better, error, best[0])
        best[1] = np.where(better, scales, best[1])
        best[2] = np.where(better[:, None, :], q, best[2])
    return best[1], best[2]


def _layout(q: np.ndarray, scales: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, scales) in the engine's layout (see the module docstring)."""
    d_in, d_out = q.shape
    rows, cols = _ceil_to(d_in, QUANT_BLOCK), _ceil_to(d_out, PANEL_COLUMNS)
    panels = cols // PANEL_COLUMNS
    fmt = _QUANTIZED[dtype]
    offset = fmt.offset
    stored = np.full((rows, cols), offset, np.uint8)
    stored[:d_in, :d_out] = (q.astype(np.int16) + offset).astype(np.uint8)
    # [group, quad, k % 4, panel, column] → [quad, panel, group, column, k % 4]
    quads = stored.reshape(rows // fmt.group, -1, 4, panels, PANEL_COLUMNS).transpose(1, 3, 0, 4, 2)
    if dtype == "int8":
        words = [quads[0]]
    else:  # each word's low nibbles hold an even quad, its high ones the next
        low = quads & 0x0F
        words = [low[i] | (low[i + 1] << 4) for i in range(0, len(quads), 2)]
        if dtype == "int6":  # the top two bits of quad i at bits 2i, 2i + 1 of the last word
            words.append(np.bitwise_or.reduce([(quads[i] >> 4) << (2 * i) for i in range(4)]))
    data = np.stack(words, axis=2)  # [panel, group, word, column, k % 4]
    padded_scales = np.zeros((rows // QUANT_BLOCK, cols), scales.dtype)
    padded_scales[:, :d_out] = scales
    scale_layout = padded_scales.reshape(rows // QUANT_BLOCK, panels, PANEL_COLUMNS).transpose(1, 0, 2)
    return (np.ascontiguousarray(data.reshape(panels, rows // fmt.group, -1)),
            np.ascontiguousarray(scale_layout))


def _values(m: dict) -> np.ndarray:
    """The float32 w[d_in, d_out] a quantized dict (in the reduce-over-rows view) stands for."""
    dtype, data, scales = m["format"], m["data"], m["scales"]
    panels, fmt = data.shape[0], _QUANTIZED[dtype]
    words = data.reshape(panels, data.shape[1], fmt.words, PANEL_COLUMNS, 4)
    if dtype == "int8":
        quads = [words[:, :, 0]]
    else:
        quads = [words[:, :, i // 2] >> (4 * (i % 2)) & 0x0F for i in range(fmt.group // 4)]
        if dtype == "int6":
            quads = [quad | ((words[:, :, 2] >> (2 * i) & 3) << 4) for i, quad in enumerate(quads)]
    # [panel, group, column, quad, k % 4] → [group, quad, k % 4, panel, column]
    q = np.stack(quads, axis=3).transpose(1, 3, 4, 0, 2).astype(np.int16) - fmt.offset
    q = q.reshape(-1, panels * PANEL_COLUMNS)
    step = scales.astype(np.float32).transpose(1, 0, 2).reshape(-1, panels * PANEL_COLUMNS)
    return q.astype(np.float32) * np.repeat(step, QUANT_BLOCK, axis=0)


def _bf16_layout(w: np.ndarray) -> np.ndarray:
    """bf16 bits of w[d_in, d_out] as [panels, ceil(d_in / 2), PANEL_COLUMNS, 2]."""
    d_in, d_out = w.shape
    rows, cols = _ceil_to(d_in, 2), _ceil_to(d_out, PANEL_COLUMNS)
    padded = np.zeros((rows, cols), np.uint16)
    padded[:d_in, :d_out] = float_to_bf16(w)
    return np.ascontiguousarray(padded.reshape(rows // 2, 2, -1, PANEL_COLUMNS).transpose(2, 0, 3, 1))


def pack_matrix(w: np.ndarray, dtype: str, reduce_axis: int) -> dict:
    view = w if reduce_axis == 0 else w.T  # [d_in, d_out]
    if dtype == "bf16":
        return {"format": "bf16", "shape": tuple(w.shape), "data": _bf16_layout(view)}
    data, scales = _layout(*quantize(view, dtype), dtype)
    return {"format": dtype, "shape": tuple(w.shape), "data": data, "scales": scales}


def unpack_matrix(m, reduce_axis: int) -> np.ndarray:
    """The float32 values a (possibly packed) matrix stands for."""
    if not isinstance(m, dict):
        return m
    rows, cols = m["shape"]
    d_in, d_out = (rows, cols) if reduce_axis == 0 else (cols, rows)
    if m["format"] == "bf16":
        data = m["data"]  # [panel, pair, column, k % 2] → [pair, k % 2, panel, column]
        values = bf16_to_float(data.transpose(1, 3, 0, 2).reshape(-1, data.shape[0] * PANEL_COLUMNS))
    else:
        values = _values(m)
    values = np.ascontiguousarray(values[:d_in, :d_out])
    return values if reduce_axis == 0 else np.ascontiguousarray(values.T)


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
    """A copy of a float32 params dict with its matrices packed as ``dtype`` (one of FORMATS)."""
    if dtype not in FORMATS:
        raise ValueError(f"dtype must be one of {', '.join(FORMATS)}, got {dtype!r}")
    wte = params.get("wte") if isinstance(params, dict) else None
    if not isinstance(wte, np.ndarray) or wte.dtype != np.float32:
        raise TypeError("pack_params takes float32 parameters (an unpacked picoGPT params dict)")
    # int4 keeps the tied wte (the input embedding and the output projection) in int6, as
    # llama.cpp's q4_0 keeps it in 6 bits (q6_K): in 4 bits it alone made the mean KL 17% larger,
    # in 6 bits ~1% (against 8 bits), for 11% fewer bytes a token than an int8 wte.
    wte_dtype = "int6" if dtype == "int4" else dtype
    return _map_matrices(params, lambda w: pack_matrix(w, wte_dtype, reduce_axis=1),
                         lambda w: pack_matrix(w, dtype, reduce_axis=0))


def unpack_params(params: dict) -> dict:
    """The float32 parameters a packed params dict stands for (for the NumPy reference)."""
    return _map_matrices(params, lambda m: unpack_matrix(m, reduce_axis=1),
                         lambda m: unpack_matrix(m, reduce_axis=0))
