"""The picoGPT-style entry points over the C++ engine.

Parameters are read in place from the caller's NumPy arrays: float32 or float64 (one dtype for
all), C-contiguous. Anything else is refused with an error that says which array and why; nothing
is converted behind the caller's back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Callable, Optional, Union

import numpy as np

from . import _core, _testing
from .options import generation_options, seeds, token_count
from .text_stream import RequestStream, TextAssembler, drive

TokenIds = Sequence[int]


class CancelToken:
    """Cancels a running ``generate()`` from another thread (within one step)."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def forward(inputs: TokenIds, params: dict, n_head: int, *,
            kv_cache_dtype: str = "float32") -> np.ndarray:
    """Logits ``[len(inputs), n_vocab]`` of every position, in the parameters' dtype.

    ``kv_cache_dtype="bf16"`` (float32 parameters) computes them as generation with a bf16 KV
    cache does: every key and value rounded to bf16 before attention reads it.
    """
    return _core.Model(params, n_head, kv_cache_dtype).forward(inputs)


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
    logit_bias: Optional[dict] = None,
    seed: Union[int, Sequence[int], None] = None,
    eos_token_id: Union[int, Sequence[int], None] = None,
    context_overflow: str = "error",
    on_token: Optional[Callable] = None,
    cancel: Optional[CancelToken] = None,
    kv_cache_dtype: str = "float32",
) -> Union[list[int], list[list[int]]]:
    """Generates with a KV cache; returns only the new token ids (as picoGPT).

    The defaults are greedy decoding, so ``generate(inputs, params, n_head, n)`` is picoGPT's
    call. ``inputs`` may also be a list of prompts (a batch): they are generated together, one
    matrix-matrix product per step, and a list of id lists comes back. See
    ``gpt2gen.options.generation_options`` for the sampling controls, ``eos_token_id`` to stop
    at an end token (it is included in the output, as transformers does),
    ``context_overflow="slide"`` to run past ``n_ctx``.

    The loop runs in C++ on its own thread, without the GIL. ``on_token(id)`` (``on_token(index,
    id)`` for a batch), if given, is called per token and stops that sequence by returning
    ``False``; ``cancel`` (a ``CancelToken``) stops the generation from another thread, and
    Ctrl-C interrupts it; either way its memory is freed at once.

    ``kv_cache_dtype="bf16"`` (float32 parameters only) stores the KV cache's keys and values
    rounded to bf16: half its memory and half the bytes attention reads per token, for a small
    accuracy cost (README, "Accuracy"); attention still computes in float32. The default
    ``"float32"`` keeps them as computed (float64 for float64 parameters).
    """
    batch = is_batch(inputs)
    prompts = list(inputs) if batch else [inputs]
    n_new = token_count(n_tokens_to_generate, "n_tokens_to_generate")
    seed_values = seeds(seed, len(prompts))
    options = generation_options(
        n_new, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, logit_bias=logit_bias, eos_token_id=eos_token_id,
        context_overflow=context_overflow, max_new_tokens_name="n_tokens_to_generate")
    if cancel is not None and not isinstance(cancel, CancelToken):
        raise TypeError("cancel must be a gpt2gen.CancelToken")
    model = _core.Model(params, n_head, kv_cache_dtype)
    # The batch is generated together: a scheduler of its own, as wide as the batch, which
    # refuses a batch that would not fit in memory at once.
    n = len(prompts)
    scheduler = _core.Scheduler(model, max_batch=max(n, 1), max_queue=max(n, 1))
    try:
        requests = scheduler.submit(prompts, [options], seeds=seed_values, together=True,
                                    what="inputs")
        streams = [RequestStream(r, _NoText(), int, [], on_token=_per_sequence(on_token, i, batch),
                                 cancel=cancel) for i, r in enumerate(requests)]
        drive(streams, cancel=cancel)
    finally:
        scheduler.shutdown()
    out = [s.token_ids for s in streams]
    return out if batch else out[0]


class _NoText(TextAssembler):
    """Token ids only: the low-level API has no encoder."""

    def __init__(self):
        super().__init__(None, (), ())

    def push(self, token: int) -> str:
        return ""

    def finish(self) -> str:
        return ""


def _per_sequence(on_token, index: int, batch: bool):
    if on_token is None:
        return None
    return (lambda token: on_token(index, token)) if batch else on_token


def is_batch(inputs) -> bool:
    """A list of prompts (each a sequence of ids) rather than one prompt."""
    if isinstance(inputs, np.ndarray):
        return inputs.ndim == 2
    if isinstance(inputs, (list, tuple)) and inputs:
        return all(isinstance(p, (list, tuple, np.ndarray)) for p in inputs)
    return False


def processed_probabilities(logits: np.ndarray, prompt_ids: TokenIds = (), output_ids: TokenIds = (),
                            **sampling) -> np.ndarray:
    """The distribution the next token is drawn from, after every processor (float64)."""
    return _testing.processed_probabilities(logits, list(prompt_ids), list(output_ids),
                                            generation_options(0, **sampling))
