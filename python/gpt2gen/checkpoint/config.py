"""``config.json`` -> picoGPT's hparams, refusing every setting the engine does not implement."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

from .errors import CheckpointError
from .hub import MODEL_FILES

PathLike = Union[str, "os.PathLike[str]"]

# picoGPT's hparams key -> config.json's key
_HPARAMS = (
    ("n_vocab", "vocab_size"),
    ("n_ctx", "n_positions"),
    ("n_embd", "n_embd"),
    ("n_head", "n_head"),
    ("n_layer", "n_layer"),
)

# Switches that would change the model's math, each with why the engine refuses it when on.
_UNSUPPORTED_SWITCHES = (
    (
        "scale_attn_by_inverse_layer_idx",
        "the engine does not scale attention by the layer index",
    ),
    (
        "reorder_and_upcast_attn",
        "the engine does not implement the reordered, upcast attention",
    ),
    ("add_cross_attention", "the engine has no cross-attention"),
)


def read_config(model_dir: Path) -> tuple[dict, dict]:
    """``(hparams, config)`` from ``model_dir/config.json``; the whole config is returned for the
    settings the weights are checked against (``tie_word_embeddings``)."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{model_dir}: no config.json (expected the Hugging Face files "
            f"{', '.join(MODEL_FILES)})"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    hparams = _hparams(config, path)
    _check_supported(config, hparams, path)
    return hparams, config


def _hparams(config: dict, path: Path) -> dict:
    if config.get("model_type", "gpt2") != "gpt2":
        raise _refuse(
            config, path, "model_type", "only GPT-2 ('gpt2') checkpoints can be loaded"
        )
    hparams = {}
    for ours, theirs in _HPARAMS:
        if theirs not in config:
            raise CheckpointError(
                f"{path}: missing {theirs!r} (needed for hparams[{ours!r}])"
            )
        value = config[theirs]
        minimum = 0 if theirs == "n_layer" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CheckpointError(
                f"{path}: {theirs}={value!r} must be an integer >= {minimum}"
            )
        hparams[ours] = value
    if hparams["n_embd"] % hparams["n_head"]:
        raise CheckpointError(
            f"{path}: n_embd={hparams['n_embd']} is not a multiple of n_head={hparams['n_head']}"
        )
    return hparams


def _check_supported(config: dict, hparams: dict, path: Path) -> None:
    if config.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise _refuse(
            config,
            path,
            "layer_norm_epsilon",
            "the engine's LayerNorm uses GPT-2's epsilon 1e-05",
        )
    if config.get("activation_function", "gelu_new") != "gelu_new":
        raise _refuse(
            config,
            path,
            "activation_function",
            "the engine implements GPT-2's tanh GELU ('gelu_new') only",
        )
    for key, why in _UNSUPPORTED_SWITCHES:
        if config.get(key, False):
            raise _refuse(config, path, key, why)
    if not config.get("scale_attn_weights", True):
        raise _refuse(
            config,
            path,
            "scale_attn_weights",
            "the engine always scales attention scores by 1/sqrt(head_dim)",
        )
    if config.get("n_inner") not in (None, 4 * hparams["n_embd"]):
        raise _refuse(
            config,
            path,
            "n_inner",
            f"the engine's MLP width is 4*n_embd = {4 * hparams['n_embd']}",
        )


def _refuse(config: dict, path: Path, key: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: {key}={config.get(key)!r} is not supported: {why}")


def load_hparams(model_dir: PathLike) -> dict:
    """picoGPT's hparams from ``config.json``, refusing settings the engine does not implement."""
    return read_config(Path(model_dir))[0]
