"""The asyncio face of the scheduler: submit requests from coroutines, iterate over their text.

>>> engine = AsyncEngine(GPT2.from_pretrained("gpt2"), max_batch=16, max_queue=256)
>>> request = engine.submit("Once upon a time", max_new_tokens=40, temperature=0.8, seed=1)
>>> async for delta in request:
...     print(delta.text, end="")
>>> completion = await request.result()

The model's scheduler runs the decode loop on its own thread; the event loop is woken through a
pipe after every step and hands each request what it produced. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Sequence
from typing import Optional, Union

from .model import GPT2
from .results import Completion, Delta
from .text_stream import RequestStream

_RECHECK_SECONDS = 0.05  # wakes the loop even if another reader drained the pipe


class AsyncRequest:
    """One submitted request: async-iterate for its ``Delta``s, ``await result()`` for the end."""

    def __init__(self, engine: AsyncEngine, stream: RequestStream):
        self._engine = engine
        self._stream = stream
        self._deltas: deque = deque()
        self._changed = asyncio.Event()

    @property
    def prompt_token_ids(self) -> list:
        return self._stream.prompt_token_ids

    @property
    def finished(self) -> bool:
        return self._stream.done

    def cancel(self) -> None:
        """Ends the request (finish_reason "cancelled") within one engine step, freeing its slot
        and KV cache. Thread-safe and idempotent."""
        self._stream.request.cancel()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Delta:
        while not self._deltas:
            if self._stream.done:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()
        return self._deltas.popleft()

    async def result(self) -> Completion:
        """The completion, once the request is over (the deltas not iterated are dropped)."""
        while not self._stream.done:
            self._changed.clear()
            await self._changed.wait()
        self._deltas.clear()
        return self._stream.completion()

    def _pump(self) -> bool:
        """Takes what the scheduler produced; False once the request is over."""
        delta = self._stream.poll()
        if delta is not None:
            self._deltas.append(delta)
            self._changed.set()
        if self._stream.done:
            self._changed.set()
            return False
        return True


class AsyncEngine:
    """Continuous batching for asyncio programs, on a ``GPT2``'s scheduler.

    ``max_batch``/``max_queue``/``step_tokens``, when given, replace the model's scheduler
    limits (any generation then in flight on it is cancelled). Requests beyond ``max_queue``
    waiting ones are refused with ``QueueFullError``.
    """

    def __init__(self, model: GPT2, *, max_batch: Optional[int] = None,
                 max_queue: Optional[int] = None, step_tokens: Optional[int] = None):
        self.model = model
        asked = {k: v for k, v in dict(max_batch=max_batch, max_queue=max_queue,
                                       step_tokens=step_tokens).items() if v is not None}
        host = model.scheduler
        if any(host.limits[k] != v for k, v in asked.items()):
            model.close()
            model.scheduler = type(host)(model.engine, **{**host.limits, **asked})
        self._host = model.scheduler
        self._active: set[AsyncRequest] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._fd: Optional[int] = None
        self._timer: Optional[asyncio.TimerHandle] = None

    @property
    def max_batch(self) -> int:
        return self._host.limits["max_batch"]

    @property
    def max_queue(self) -> int:
        return self._host.limits["max_queue"]

    @property
    def running(self) -> int:
        """Sequences in the running batch (all the model's callers, not only this engine's)."""
        return self._host.scheduler.running if self._host.started else 0

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return self._host.scheduler.waiting if self._host.started else 0

    def submit(self, prompt: Union[str, Sequence[int]], max_new_tokens: int = 16,
               **options) -> AsyncRequest:
        """Queues a request (``GPT2.generate``'s keyword options, plus ``prompt_logprobs``).

        Call it from a coroutine. Bad options raise ``TypeError``/``ValueError`` now; a full
        queue raises ``QueueFullError``; a request that could never fit in memory, ``ValueError``.
        """
        loop = asyncio.get_running_loop()
        self._attach(loop)
        if isinstance(prompt, str):
            ids = self.model.encode(prompt)
        elif isinstance(prompt, (list, tuple)):
            ids = list(prompt)
        else:
            raise TypeError(f"prompt must be a str or a list of token ids, got {type(prompt).__name__}")
        (stream,) = self.model._submit([ids], max_new_tokens, options, bounded=True)
        request = AsyncRequest(self, stream)
        self._active.add(request)
        return request

    async def aclose(self) -> None:
        """Cancels every request in flight and stops the scheduler's thread."""
        await asyncio.get_running_loop().run_in_executor(None, self.model.close)
        self._pump()
        self._detach()

    # --- the event loop's side --------------------------------------------------------------

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop and self._fd == self._host.scheduler.notify_fd:
            return
        self._detach()
        self._loop = loop
        self._fd = self._host.scheduler.notify_fd
        loop.add_reader(self._fd, self._on_readable)
        self._schedule_recheck()

    def _detach(self) -> None:
        if self._loop is not None and self._fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._fd, self._timer = None, None, None

    def _on_readable(self) -> None:
        try:
            while os.read(self._fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._pump()

    def _schedule_recheck(self) -> None:
        def recheck():
            self._pump()
            self._schedule_recheck()

        if self._loop is not None and not self._loop.is_closed():
            self._timer = self._loop.call_later(_RECHECK_SECONDS, recheck)

    def _pump(self) -> None:
        for request in list(self._active):
            if not request._pump():
                self._active.discard(request)
