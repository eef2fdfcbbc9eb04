"""A model directory -> ``(hparams, params)`` or picoGPT's ``(encoder, hparams, params)``.

The directory's weights are opened by the reader of their format (``model.safetensors``, its
sharded form, or an opted-in pickle), checked against ``config.json`` and mapped into picoGPT's
params tree; ``load_pretrained`` adds the tokenizer and accepts model names (``hub``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .config import read_config
from .errors import CheckpointError
from .hub import resolve_model_dir
from .safetensors_file import SafetensorsFile
from .sharded import ShardedTensors
from .to_params import checkpoint_to_params, params_dtype
from .torch_pickle import TorchTensors, pickle_refusal

PathLike = Union[str, "os.PathLike[str]"]


def load_pretrained(
    name_or_path: PathLike,
    models_dir: Optional[PathLike] = None,
    *,
    allow_pickle: bool = False,
    dtype: Any = np.float32,
):
    """``(encoder, hparams, params)`` as picoGPT's ``load_encoder_hparams_and_params``.

    ``dtype``: float32 (the default, mapped from the file), float64 (a converted copy), or
    ``"bf16"`` / ``"int8"`` / ``"int4"``: the matrices packed once by ``gpt2gen.pack_params``.

    ``name_or_path``: a directory in Hugging Face layout (``config.json``, ``model.safetensors``,
    ``vocab.json``, ``merges.txt``), or one of ``gpt2``, ``gpt2-medium``, ``gpt2-large``,
    ``gpt2-xl`` (or ``124M``, ``355M``, ``774M``, ``1558M``), downloaded once with
    ``huggingface_hub`` into its cache, or into ``models_dir/<name>`` when ``models_dir`` is given
    (files already there are used without network access). An existing directory wins over a
    name. Raises ``CheckpointError`` (``CheckpointDownloadError`` when a download fails).
    """
    from ..packing import FORMATS, pack_params

    packed = dtype if isinstance(dtype, str) and dtype in FORMATS else None
    if not packed:
        params_dtype(dtype)  # a bad dtype is refused before anything is downloaded or read
    model_dir = resolve_model_dir(name_or_path, models_dir)
    hparams, params = load_checkpoint(
        model_dir, allow_pickle=allow_pickle, dtype=np.float32 if packed else dtype
    )
    if packed:
        params = pack_params(params, packed)
    encoder = _load_encoder(model_dir, hparams)
    return encoder, hparams, params


def load_checkpoint(
    model_dir: PathLike, *, allow_pickle: bool = False, dtype: Any = np.float32
) -> tuple[dict, dict]:
    """``(hparams, params)`` from a model directory; ``load_pretrained`` without the tokenizer."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a directory")
    hparams, config = read_config(model_dir)
    tensors, source = _open_weights(model_dir, allow_pickle)
    if (
        config.get("tie_word_embeddings", True) is False
        and "lm_head.weight" not in tensors
    ):
        raise CheckpointError(
            f"{model_dir / 'config.json'}: tie_word_embeddings=false but {source} has no "
            "lm_head.weight; gpt2gen ties the output projection to wte and cannot load a separate "
            "head"
        )
    params = checkpoint_to_params(tensors, hparams, source=source, dtype=dtype)
    return hparams, params


def _open_weights(model_dir: Path, allow_pickle: bool) -> tuple[Mapping, str]:
    """The directory's tensors and the file they come from, safetensors preferred."""
    safetensors = model_dir / "model.safetensors"
    if safetensors.is_file():
        return SafetensorsFile(safetensors), str(safetensors)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return ShardedTensors(index, SafetensorsFile), str(index)
    for path, sharded in (
        (model_dir / "pytorch_model.bin", False),
        (model_dir / "pytorch_model.bin.index.json", True),
    ):
        if path.is_file():
            if not allow_pickle:
                raise pickle_refusal(path)
            if sharded:
                return ShardedTensors(path, TorchTensors), str(path)
            return TorchTensors(path), str(path)
    raise CheckpointError(
        f"{model_dir}: no weights found: expected model.safetensors (or "
        "model.safetensors.index.json with its shards) next to config.json"
    )


def _load_encoder(model_dir: Path, hparams: dict):
    files = [model_dir / "vocab.json", model_dir / "merges.txt"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(
            f"{model_dir}: tokenizer file{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} missing"
        )
    from ..tokenizer import Tokenizer  # lazily: the weights can be loaded without it

    try:
        encoder = Tokenizer.from_files(*files)
    except (ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(
            f"{files[0]} / {files[1].name}: cannot load the tokenizer: {e}"
        ) from None
    if encoder.n_vocab > hparams["n_vocab"]:
        raise CheckpointError(
            f"{files[0]}: the tokenizer has ids up to {encoder.n_vocab - 1} but the model's "
            f"vocab_size is {hparams['n_vocab']}"
        )
    return encoder
