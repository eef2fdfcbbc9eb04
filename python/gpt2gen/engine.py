"""The picoGPT-style entry points over the C++ engine.

Parameters are read in place from the caller's NumPy arrays: float32 or float64 (one dtype for
all), C-contiguous. Anything else is refused with an error that says which array and why; nothing
is converted behind the caller's back.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from . import _core


def forward(inputs: Sequence[int], params: dict, n_head: int) -> np.ndarray:
    """Logits ``[len(inputs), n_vocab]`` of every position, in the parameters' dtype."""
    return _core.Model(params, n_head).forward(inputs)


def generate(
    inputs: Sequence[int],
    params: dict,
    n_head: int,
    n_tokens_to_generate: int,
    *,
    on_token: Optional[Callable[[int], Optional[bool]]] = None,
) -> list[int]:
    """Greedy decoding with a KV cache; returns only the new token ids (as picoGPT).

    The whole loop runs in C++ without the GIL. ``on_token(id)``, if given, is called with each
    new id as it is produced and stops the generation by returning ``False``.
    """
    return _core.Model(params, n_head).generate(inputs, n_tokens_to_generate, on_token)
