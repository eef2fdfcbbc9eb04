"""Sharded checkpoints: the tensors of several files, found through a ``*.index.json`` weight map.

Hugging Face writes ``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``) next to
the shards; each shard is opened by the reader of its format and must hold exactly the tensors
the map assigns to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import CheckpointError


class ShardedTensors(Mapping):
    """The tensors of a sharded checkpoint, from its ``*.index.json`` weight map."""

    def __init__(self, index_path: Path, open_shard: Callable[[Path], Mapping]):
        self.path = index_path
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(
                f"{index_path}: cannot read the shard index: {e}"
            ) from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CheckpointError(
                f"{index_path}: expected an object with a 'weight_map' of tensor name -> file name"
            )
        shards: dict[str, Mapping] = {}
        for filename in sorted(set(weight_map.values())):
            if Path(filename).name != filename or filename in (".", ".."):
                raise CheckpointError(
                    f"{index_path}: shard file name {filename!r} must be a plain file name"
                )
            shard_path = index_path.parent / filename
            if not shard_path.is_file():
                raise CheckpointError(
                    f"{index_path}: shard {filename!r} is missing from {index_path.parent}"
                )
            shards[filename] = open_shard(shard_path)
        self._where: dict[str, Mapping] = {}
        for name, filename in weight_map.items():
            if name not in shards[filename]:
                raise CheckpointError(
                    f"{index_path}: tensor {name!r} is not in its shard {filename!r}"
                )
            self._where[name] = shards[filename]
        for filename, shard in shards.items():
            for name in shard:
                if weight_map.get(name) != filename:
                    where = (
                        f"puts in {weight_map[name]!r}"
                        if name in weight_map
                        else "does not list"
                    )
                    raise CheckpointError(
                        f"{index_path}: shard {filename!r} has tensor {name!r}, which the weight "
                        f"map {where}"
                    )

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
