"""One HTTP request's sequences on the engine: submitted together, followed together, cancelled
together.

A request with several prompts and ``n`` choices runs ``len(prompts) * n`` engine requests;
choice ``i`` of prompt ``p`` has index ``p * n + i`` (OpenAI's order) and, when the request has a
``seed``, is sampled with ``seed + i``: it is then exactly
``model.generate(prompt_p, max_tokens, seed=seed + i, ...)``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Optional

import gpt2gen

from .errors import APIError, invalid
from .sse import cancel_on_disconnect

# Engine argument -> request field, for the engine's own validation messages.
_FIELDS = {"max_new_tokens": "max_tokens", "stop_strings": "stop", "prompt_logprobs": "logprobs"}


@dataclass
class Choice:
    index: int
    prompt_ids: list
    request: Any = None  # the engine's request, once submitted
    first_token_at: Optional[float] = None


def sampling(body, n_vocab: int, extra_stop=()) -> dict:
    """The engine options of a validated request; OpenAI's defaults where it sent null."""
    def pick(value, default):
        return default if value is None else value

    bias = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise invalid("logit_bias", f"logit_bias keys must be token ids, got {key!r}") from None
        if not 0 <= token < n_vocab:
            raise invalid("logit_bias", f"logit_bias key {token} is not a token id (0 <= id < {n_vocab})")
        bias[token] = value
    return dict(
        temperature=pick(body.temperature, 1.0), top_p=pick(body.top_p, 1.0),
        top_k=max(pick(body.top_k, 0), 0), min_p=pick(body.min_p, 0.0),
        repetition_penalty=pick(body.repetition_penalty, 1.0),
        presence_penalty=pick(body.presence_penalty, 0.0),
        frequency_penalty=pick(body.frequency_penalty, 0.0),
        logit_bias=bias or None, ignore_eos=bool(body.ignore_eos),
        stop_strings=list(extra_stop) + list(body.stop or []) or None)


class Group:
    """The engine requests of one HTTP request."""

    def __init__(self, state, prompts: list, n: int, max_tokens: int, options: dict,
                 seed: Optional[int], fields: Optional[dict] = None):
        """``prompts``: token-id lists, checked; ``fields`` renames engine arguments in errors."""
        self.state, self.n, self.max_tokens, self.options, self.seed = state, n, max_tokens, options, seed
        self.fields = {**_FIELDS, **(fields or {})}
        self.arrived = time.perf_counter()
        if seed is not None and seed + n - 1 >= 2**64:
            raise invalid("seed", "seed + n - 1 must be below 2**64 (choice i uses seed + i)")
        engine = state.engine
        if len(prompts) * n > engine.max_queue:
            raise invalid("n", f"this request asks for {len(prompts) * n} sequences (prompts x n); "
                          f"the server queues at most {engine.max_queue}")
        self.choices = [Choice(p * n + i, ids) for p, ids in enumerate(prompts) for i in range(n)]
        self.prompt_tokens = sum(len(ids) for ids in prompts)

    def submit(self) -> None:
        """Submits every sequence, or none: a refusal cancels those already queued."""
        engine = self.state.engine
        try:
            for choice in self.choices:
                seed = None if self.seed is None else self.seed + choice.index % self.n
                choice.request = engine.submit(choice.prompt_ids, max_new_tokens=self.max_tokens,
                                               seed=seed, **self.options)
        except gpt2gen.QueueFullError:
            self.cancel()
            seconds = self.state.config.retry_after_seconds
            raise APIError(429, f"The server is busy: its queue is full ({engine.max_queue} sequences "
                           f"waiting). Retry after {seconds} s.", code="queue_full",
                           headers={"Retry-After": str(seconds)}) from None
        except (ValueError, TypeError) as error:
            self.cancel()
            raise invalid(self._field(str(error)), str(error)) from None
        self.state.metrics.prompt_tokens.inc(self.prompt_tokens)

    def _field(self, message: str) -> Optional[str]:
        match = re.match(r"\s*(\w+)", message)
        name = match.group(1) if match else None
        if name in self.fields:
            return self.fields[name]
        return name if name in self.options or name in ("seed", "logprobs", "prompt") else None

    def cancel(self) -> None:
        for choice in self.choices:
            if choice.request is not None:
                choice.request.cancel()

    async def events(self) -> AsyncIterator[tuple]:
        """``("delta", choice, Delta)`` as tokens come, ``("done", choice, Completion)`` as each
        sequence ends, in the order they happen. Leaving early cancels what still runs."""
        queue: asyncio.Queue = asyncio.Queue()
        for choice in self.choices:
            self.state.keep(asyncio.ensure_future(self._follow(choice, queue)))
        remaining = len(self.choices)
        try:
            while remaining:
                kind, choice, item = await queue.get()
                if kind == "error":
                    raise item
                if kind == "done":
                    remaining -= 1
                elif choice.first_token_at is None and item.token_ids:
                    choice.first_token_at = time.perf_counter()
                    if all(c is choice or c.first_token_at is None for c in self.choices):
                        self.state.metrics.time_to_first_token.observe(choice.first_token_at - self.arrived)
                yield kind, choice, item
            self.state.metrics.request_latency.observe(time.perf_counter() - self.arrived)
        finally:
            self.cancel()  # a no-op for finished sequences

    async def _follow(self, choice: Choice, queue: asyncio.Queue) -> None:
        """Relays one sequence's deltas and records its metrics. Runs to the sequence's end even
        when nobody listens any more, so a cancelled sequence is counted too."""
        metrics = self.state.metrics
        try:
            last = None
            async for delta in choice.request:
                if delta.token_ids:
                    now = time.perf_counter()
                    if last is not None:
                        gap = (now - last) / len(delta.token_ids)
                        for _ in delta.token_ids:
                            metrics.inter_token_latency.observe(gap)
                    last = now
                queue.put_nowait(("delta", choice, delta))
            completion = await choice.request.result()
        except Exception as error:  # the engine failed: the request ends with an error
            queue.put_nowait(("error", choice, error))
            return
        metrics.generation_tokens.inc(len(completion.token_ids))
        metrics.finished.labels(completion.finish_reason).inc()
        queue.put_nowait(("done", choice, completion))


def check_prompt(state, ids: list, max_tokens: int, field: str = "prompt",
                 max_tokens_field: str = "max_tokens") -> list:
    """Refuses an empty prompt, ids outside the vocabulary and a prompt + completion longer
    than the context (OpenAI's message), naming the field."""
    if not ids:
        raise invalid(field, f"{field} is empty: GPT-2 needs at least one token to continue "
                      "(a document conventionally starts with '<|endoftext|>')")
    n_vocab = state.n_vocab
    for token in ids:
        if not 0 <= token < n_vocab:
            raise invalid(field, f"{field} holds token id {token}, outside the vocabulary (0 <= id < {n_vocab})")
    n_ctx = state.model.n_ctx
    if len(ids) + max_tokens > n_ctx:
        raise invalid(max_tokens_field if len(ids) < n_ctx else field,
                      f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                      f"{len(ids) + max_tokens} tokens ({len(ids)} in the prompt, {max_tokens} for the "
                      "completion). Please reduce the prompt or the completion length.",
                      "context_length_exceeded")
    return ids


# OpenAI's finish reasons: both the end-of-text token and a stop string are "stop".
FINISH_REASONS = {"length": "length", "eos": "stop", "stop": "stop"}


def finish_reason(completion) -> str:
    """OpenAI's finish reason; the two ways the engine can end a request early are 503s."""
    if completion.finish_reason == "cancelled":  # the client is still there: the engine shut down
        raise APIError(503, "The generation was cancelled: the server is shutting down", code="cancelled")
    if completion.finish_reason == "out_of_memory":
        raise APIError(503, "The server ran out of memory for this generation; retry shortly or ask "
                       "for fewer tokens", code="out_of_memory", headers={"Retry-After": "1"})
    return FINISH_REASONS[completion.finish_reason]


async def run_to_end(group: Group, receive) -> dict:
    """Every sequence's Completion by choice index; a client disconnect cancels them."""
    completions = {}
    async with cancel_on_disconnect(receive, group.cancel):
        async for kind, choice, item in group.events():
            if kind == "done":
                completions[choice.index] = item
    return completions
