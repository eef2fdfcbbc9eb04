"""Generation options from Python values to the engine's one options type.

Python converts types here (a clear ``TypeError`` naming the argument); every range is checked
once, in C++ (``GenerationOptions::validate``), when a request is submitted (``ValueError``).
"""

from __future__ import annotations

import numbers
import secrets
from typing import Optional

from . import _core


def token_count(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    if n > 2**31 - 1:
        raise ValueError(f"{name} is too large: {n}")
    return int(n)


def _check_number(name, value, kind=numbers.Real) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if kind is numbers.Integral else "a number"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")


def _float(name, value) -> float:
    _check_number(name, value)
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is out of range: {value}") from None


def _int32(name, value) -> int:
    _check_number(name, value, numbers.Integral)
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"{name} is out of range: {value}")
    return int(value)


def id_list(name, value, count=None) -> list[int]:
    """An int or a list of ints (one, or ``count`` of them)."""
    single = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    values = [value] if single else value
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be an int or a list of ints, got {type(value).__name__}")
    values = list(values)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a list of ints, got {v!r}")
    if count is not None and len(values) not in (1, count):
        raise ValueError(f"{name} needs one value or one per prompt ({count}), got {len(values)}")
    return [int(v) for v in values]


def seeds(seed, count: int) -> list[int]:
    """One seed per prompt: the given one(s), or a fresh random one (as an unseeded
    transformers/NumPy generation) shared by the prompts."""
    if seed is None:
        return [secrets.randbits(64)] * count
    values = id_list("seed", seed, count)
    for s in values:
        if not 0 <= s < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {s}")
    return values * count if len(values) == 1 else values


def _logit_bias(logit_bias) -> list[tuple[int, float]]:
    if logit_bias is None:
        return []
    if not hasattr(logit_bias, "items"):
        raise TypeError(f"logit_bias must be a dict {{token id: bias}}, got {type(logit_bias).__name__}")
    pairs = []
    for token, bias in logit_bias.items():
        if isinstance(token, str) and token.lstrip("-").isdigit():  # JSON object keys are strings
            token = int(token)
        pairs.append((_int32("logit_bias token id", token), _float("logit_bias value", bias)))
    return sorted(pairs)


def generation_options(
    max_new_tokens: int,
    *,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    logit_bias=None,
    seed: int = 0,
    eos_token_id=None,
    logprobs: Optional[int] = None,
    prompt_logprobs: Optional[int] = None,
    context_overflow: str = "error",
    max_new_tokens_name: str = "max_new_tokens",
) -> _core.GenerationOptions:
    """The controls of one generation, applied in transformers' order.

    - ``logit_bias`` (OpenAI): ``{token id: bias}`` added to the logits first; bias in [-100, 100].
    - ``repetition_penalty`` (transformers): over the ids of the prompt and the output, positive
      logits are divided by it and negative ones multiplied; 1 disables it. Applies when greedy.
    - ``presence_penalty``, ``frequency_penalty`` (OpenAI): subtract
      ``presence·[count > 0] + frequency·count`` over the ids generated so far; in [-2, 2].
    - ``temperature``: logits are divided by it; 0 means greedy (argmax, ties to the lowest id).
    - ``top_k`` (0 = off), ``top_p`` (nucleus, 1 = off), ``min_p`` (0 = off), in that order,
      as transformers' warpers.
    """
    options = _core.GenerationOptions()
    options.max_new_tokens = token_count(max_new_tokens, max_new_tokens_name)
    options.temperature = _float("temperature", temperature)
    options.top_k = _int32("top_k", top_k)
    options.top_p = _float("top_p", top_p)
    options.min_p = _float("min_p", min_p)
    options.repetition_penalty = _float("repetition_penalty", repetition_penalty)
    options.presence_penalty = _float("presence_penalty", presence_penalty)
    options.frequency_penalty = _float("frequency_penalty", frequency_penalty)
    options.logit_bias = _logit_bias(logit_bias)
    options.seed = seed
    eos = [] if eos_token_id is None else id_list("eos_token_id", eos_token_id)
    options.eos_token_ids = [_int32("eos_token_id", e) for e in eos]
    options.top_logprobs = None if logprobs is None else _int32("logprobs", logprobs)
    options.prompt_logprobs = None if prompt_logprobs is None else _int32("prompt_logprobs", prompt_logprobs)
    if context_overflow not in ("error", "slide"):
        raise ValueError(f"context_overflow must be 'error' or 'slide', got {context_overflow!r}")
    options.slide_context = context_overflow == "slide"
    return options
