"""The picoGPT-style entry points over the C++ engine.

Parameters are read in place from the caller's NumPy arrays: float32 or float64 (one dtype for
all), C-contiguous. Anything else is refused with an error that says which array and why; nothing
is converted behind the caller's back.
"""

from __future__ import annotations

import numbers
import secrets
from typing import Callable, Optional, Sequence, Union

import numpy as np

from . import _core

TokenIds = Sequence[int]


def forward(inputs: TokenIds, params: dict, n_head: int) -> np.ndarray:
    """Logits ``[len(inputs), n_vocab]`` of every position, in the parameters' dtype."""
    return _core.Model(params, n_head).forward(inputs)


def generate(
    inputs: Union[TokenIds, Sequence[TokenIds]],
    params: dict,
    n_head: int,
    n_tokens_to_generate: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    seed: Union[int, Sequence[int], None] = None,
    eos_token_id: Union[int, Sequence[int], None] = None,
    context_overflow: str = "error",
    on_token: Optional[Callable] = None,
    cancel: Optional[_core.CancelToken] = None,
) -> Union[list[int], list[list[int]]]:
    """Generates with a KV cache; returns only the new token ids (as picoGPT).

    The defaults are greedy decoding, so ``generate(inputs, params, n_head, n)`` is picoGPT's
    call. ``inputs`` may also be a list of prompts (a batch): they are generated together, one
    matrix-matrix product per step, and a list of id lists comes back. See ``sampling_options``
    for the sampling controls, ``eos_token_id`` to stop at an end token (it is included in the
    output, as transformers does), ``context_overflow="slide"`` to run past ``n_ctx``.

    The loop runs in C++ without the GIL. ``on_token(id)`` (``on_token(index, id)`` for a batch),
    if given, is called per token and stops that sequence by returning ``False``; ``cancel``
    (a ``CancelToken``) stops the generation from another thread.
    """
    batch = is_batch(inputs)
    prompts = list(inputs) if batch else [inputs]
    options = generation_options(
        len(prompts), temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, seed=seed, eos_token_id=eos_token_id,
        context_overflow=context_overflow)
    n_new = token_count(n_tokens_to_generate, "n_tokens_to_generate")
    callback = on_token
    if on_token is not None and not batch:
        callback = lambda _, token: on_token(token)  # noqa: E731
    if cancel is not None and not isinstance(cancel, _core.CancelToken):
        raise TypeError("cancel must be a gpt2gen.CancelToken")
    out = _core.Model(params, n_head).generate(prompts, n_new, options, callback, cancel)
    return out if batch else out[0]


def is_batch(inputs) -> bool:
    """A list of prompts (each a sequence of ids) rather than one prompt."""
    if isinstance(inputs, np.ndarray):
        return inputs.ndim == 2
    if isinstance(inputs, (list, tuple)) and inputs:
        return all(isinstance(p, (list, tuple, np.ndarray)) for p in inputs)
    return False


def token_count(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    if n > 2**31 - 1:
        raise ValueError(f"{name} is too large: {n}")
    return int(n)


def _number(name, value, kind=numbers.Real) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if kind is numbers.Integral else "a number"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")


def _float(name, value) -> float:
    _number(name, value)
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is out of range: {value}") from None


def _id_list(name, value, count=None) -> list[int]:
    values = [value] if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be an int or a list of ints, got {type(value).__name__}")
    values = list(values)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a list of ints, got {v!r}")
    if count is not None and len(values) not in (1, count):
        raise ValueError(f"{name} needs one value or one per prompt ({count}), got {len(values)}")
    return [int(v) for v in values]


def sampling_options(*, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                     presence_penalty=0.0, frequency_penalty=0.0) -> dict:
    """The token-choice controls, applied in transformers' order.

    - ``repetition_penalty`` (transformers): over the ids of the prompt and the output, positive
      logits are divided by it and negative ones multiplied; 1 disables it. Applies when greedy.
    - ``presence_penalty``, ``frequency_penalty`` (OpenAI): subtract
      ``presence·[count > 0] + frequency·count`` over the ids generated so far; in [-2, 2].
    - ``temperature``: logits are divided by it; 0 means greedy (argmax, ties to the lowest id).
    - ``top_k`` (0 = off), ``top_p`` (nucleus, 1 = off), ``min_p`` (0 = off), in that order,
      as transformers' warpers.
    Ranges are checked by the engine (ValueError); types here (TypeError).
    """
    _number("top_k", top_k, numbers.Integral)
    if not -(2**31) <= top_k < 2**31:
        raise ValueError(f"top_k is out of range: {top_k}")
    return {"temperature": _float("temperature", temperature), "top_k": int(top_k),
            "top_p": _float("top_p", top_p), "min_p": _float("min_p", min_p),
            "repetition_penalty": _float("repetition_penalty", repetition_penalty),
            "presence_penalty": _float("presence_penalty", presence_penalty),
            "frequency_penalty": _float("frequency_penalty", frequency_penalty)}


def generation_options(n_prompts: int, *, seed=None, eos_token_id=None, context_overflow="error",
                       logprobs: Optional[int] = None, **sampling) -> dict:
    """Every option of a generation, type-checked, in the form the C++ engine takes."""
    options = sampling_options(**sampling)
    if seed is None:  # a fresh seed per call, like an unseeded transformers/NumPy generation
        seeds = [secrets.randbits(64)]
    else:
        seeds = _id_list("seed", seed, n_prompts)
        for s in seeds:
            if not 0 <= s < 2**64:
                raise ValueError(f"seed must be in [0, 2**64), got {s}")
    options["seeds"] = seeds * n_prompts if len(seeds) == 1 else seeds
    options["eos_token_ids"] = [] if eos_token_id is None else _id_list("eos_token_id", eos_token_id)
    for eos in options["eos_token_ids"]:
        if not 0 <= eos < 2**31:
            raise ValueError(f"eos_token_id {eos} is not a token id")
    if context_overflow not in ("error", "slide"):
        raise ValueError(f"context_overflow must be 'error' or 'slide', got {context_overflow!r}")
    options["slide_context"] = context_overflow == "slide"
    if logprobs is None:
        options["top_logprobs"] = -1
    else:
        _number("logprobs", logprobs, numbers.Integral)
        if not 0 <= logprobs <= 1000:
            raise ValueError(f"logprobs (alternatives per token) must be in [0, 1000], got {logprobs}")
        options["top_logprobs"] = int(logprobs)
    return options


def processed_probabilities(logits: np.ndarray, prompt_ids: TokenIds = (), output_ids: TokenIds = (),
                            **sampling) -> np.ndarray:
    """The distribution the next token is drawn from, after every processor (float64)."""
    return _core.processed_probabilities(logits, list(prompt_ids), list(output_ids),
                                         sampling_options(**sampling))
