"""The ``.safetensors`` reader: a validated header, then float32 arrays mapped from the file.

The file is parsed here, not by the ``safetensors`` package: the header is validated against the
file before anything is allocated (length, JSON, offsets inside the file and consistent with
dtype x shape, no overlaps, rank and element count), and every float32 (``F32``) tensor is a
read-only NumPy view of one ``mmap`` of the file, so loading copies nothing and the pages are
read (and shared with the page cache) only when the engine touches them. ``F16``, ``BF16`` and
``F64`` tensors are converted once to float32: those are copies.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .errors import CheckpointError

PathLike = Union[str, "os.PathLike[str]"]

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
                raise CheckpointError(
                    f"{path}: the safetensors header lists {key!r} twice"
                )
            out[key] = value
        return out

    return hook


def _parse_header(
    raw: bytes, path: Path, data_size: int
) -> tuple[dict[str, _Entry], dict[str, str]]:
    """Validate a safetensors JSON header against the size of the data section that follows it."""
    try:
        header = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys(path)
        )
    except (
        UnicodeDecodeError,
        ValueError,
        RecursionError,
    ) as e:  # ValueError: JSON, huge ints
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
        raise CheckpointError(
            f"{path}: '__metadata__' must be an object of string values, got {metadata!r}"
        )

    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {
            "dtype",
            "shape",
            "data_offsets",
        }:
            got = sorted(info) if isinstance(info, dict) else type(info).__name__
            raise CheckpointError(
                f"{where}: expected exactly the keys dtype, shape, data_offsets; got {got}"
            )
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise CheckpointError(
                f"{where}: unknown dtype {dtype!r} (known: {', '.join(_DTYPES)})"
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(
                f"{where}: shape must be a list of non-negative integers, got {shape!r}"
            )
        if len(shape) > MAX_RANK:
            raise CheckpointError(
                f"{where}: shape has {len(shape)} dimensions, more than {MAX_RANK}"
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(
                f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                f"got {offsets!r}"
            )
        begin, end = offsets
        if end > data_size:
            raise CheckpointError(
                f"{where}: data_offsets [{begin}, {end}] reach beyond the end of the file, whose "
                f"data section has only {data_size} bytes (the file is truncated or its header is "
                "wrong)"
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
            raise CheckpointError(
                f"{where}: shape {shape} has more than 2**62 elements"
            )
        entries[name] = _Entry(dtype, tuple(shape), begin, end)

    previous: Optional[tuple[str, _Entry]] = None
    for name, entry in sorted(
        entries.items(), key=lambda item: (item[1].begin, item[1].end)
    ):
        if entry.begin == entry.end:
            continue  # empty tensors occupy no bytes
        if previous is not None and entry.begin < previous[1].end:
            raise CheckpointError(
                f"{path}: tensors {previous[0]!r} (bytes [{previous[1].begin}, "
                f"{previous[1].end}]) and {name!r} (bytes [{entry.begin}, {entry.end}]) overlap"
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
                    f"{self.path}: the header length field says {header_len} bytes but the file "
                    f"has only {size - 8} bytes after it (the file is truncated or not safetensors)"
                )
            raw = f.read(header_len)
            if len(raw) != header_len:
                raise CheckpointError(
                    f"{self.path}: truncated while reading the header"
                )
            self.data_offset = 8 + header_len
            self.file_size = size
            self._entries, self.metadata = _parse_header(
                raw, self.path, size - self.data_offset
            )
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
            out = np.frombuffer(
                self.mmap, dtype=_DTYPES[entry.dtype][0], count=count, offset=offset
            )
            if entry.dtype != "F32":
                out = out.astype(np.float32)  # the documented conversion copy
            elif not out.flags.aligned or sys.byteorder != "little":
                out = out.astype(
                    np.float32
                )  # the engine needs aligned, native-order floats
        return out.reshape(entry.shape)


def open_safetensors(path: PathLike) -> SafetensorsFile:
    """Open and validate one ``.safetensors`` file (see ``SafetensorsFile``)."""
    return SafetensorsFile(path)
