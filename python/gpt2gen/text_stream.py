"""One request's output as text: tokens from the scheduler in, text pieces out.

The engine chooses tokens (sampling, penalties, EOS) in C++ on the scheduler's thread; here the
consumer's thread turns them into text, holds back what may begin a stop string, and stops the
request when one matches. Which tokens belong to the output is decided by the text alone, so it
does not depend on how far the scheduler ran ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

from .results import Completion, Delta, TokenLogprob


class TextAssembler:
    """The text of one sequence's new tokens, piece by piece, with stop strings held back.

    A piece is released only once no stop string can still match across it, so the streamed
    pieces always join to the final text.
    """

    def __init__(self, encoder, stop_strings: Sequence[str], eos_ids: Sequence[int]):
        self._encoder = encoder
        self._incremental = encoder.decoder() if hasattr(encoder, "decoder") else None
        self._ids: list[int] = []
        self._stop = [s for s in stop_strings if s]
        self._eos = set(eos_ids)
        self.text = ""  # decoded so far
        self.released = 0  # characters of text already given out
        self.stopped = False

    @property
    def has_stop_strings(self) -> bool:
        return bool(self._stop)

    def push(self, token: int) -> str:
        if token in self._eos:  # the EOS token ends the text; it is not part of it
            return ""
        if self._incremental is not None:
            self.text += self._incremental.push(token)
        else:  # a word-level encoder: decoding a longer sequence extends the text
            self._ids.append(token)
            self.text = self._encoder.decode(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        if self._incremental is not None and not self.stopped:
            self.text += self._incremental.flush()
            self._match()
        return self._release(final=True)

    def _match(self) -> None:
        start = max(0, self.released - max((len(s) for s in self._stop), default=0))
        found = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        self._match()
        end = len(self.text)
        if not final and not self.stopped:  # keep back a tail that may begin a stop string
            for s in self._stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if s.startswith(self.text[-k:]):
                        end = min(end, len(self.text) - k)
                        break
        piece = self.text[self.released : end]
        self.released = max(self.released, end)
        return piece


class RequestStream:
    """Consumes one scheduler request: ``poll()`` turns what is new into a ``Delta``.

    ``on_token(token) -> bool`` (optional) sees each token first; returning False stops the
    request after that token, as a stop string would.
    """

    def __init__(self, request, assembler: TextAssembler, decode_token: Callable[[int], str],
                 prompt_token_ids: list, want_logprobs: bool = False,
                 want_prompt_logprobs: bool = False,
                 on_token: Optional[Callable[[int], object]] = None, cancel=None):
        self.request = request
        self._cancel = cancel
        self.prompt_token_ids = prompt_token_ids
        self._assembler = assembler
        self._decode_token = decode_token
        self._want_prompt_logprobs = want_prompt_logprobs
        self._on_token = on_token
        self.token_ids: list[int] = []
        self.logprobs: Optional[list] = [] if want_logprobs else None
        self.finish_reason: Optional[str] = None  # set once the request is over
        self._ended = False  # the output ended (stop string, on_token) before the request did

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def reads_each_token(self) -> bool:
        """Whether a token may end the output (a stop string, on_token) or a cancel may come:
        then each step's tokens are read as they come, else only the finished request."""
        return (self._on_token is not None or self._cancel is not None
                or self._assembler.has_stop_strings)

    def poll(self) -> Optional[Delta]:
        """What is new since the last poll (None if nothing), ending with the final piece."""
        if self.done:
            return None
        tokens, scored, finish = self.request.take()
        if finish == "out_of_memory":
            self.finish_reason = finish
            raise MemoryError("out of memory for this generation's KV cache and scratch")
        new_ids, new_logprobs, text = [], [], ""
        for k, token in enumerate(tokens):
            if self._ended:
                break  # produced after the output ended: not part of it
            if self._cancel is not None and self._cancel.cancelled:
                self._ended, finish = True, "cancelled"
                self.request.cancel()
                break
            new_ids.append(token)
            if scored is not None:
                new_logprobs.append(self._token_logprob(scored[k]))
            text += self._assembler.push(token)
            if self._assembler.stopped or self._on_token_stops(token):
                self._ended, finish = True, "stop"
                self.request.stop()
        self.token_ids += new_ids
        if self.logprobs is not None:
            self.logprobs += new_logprobs
        if self._ended and finish is None:
            finish = "stop"
        if finish is not None:
            text += self._assembler.finish()
            self.finish_reason = "stop" if self._assembler.stopped else finish
        if not new_ids and not text and finish is None:
            return None
        return Delta(text, new_ids, new_logprobs if self.logprobs is not None else None)

    def completion(self) -> Completion:
        prompt_logprobs = None
        if self._want_prompt_logprobs:
            scored = self.request.prompt_logprobs()
            prompt_logprobs = [None] + [self._token_logprob(s) for s in scored]
        return Completion(self._assembler.text, self.token_ids, self.finish_reason, self.logprobs,
                          self.prompt_token_ids, prompt_logprobs)

    def _on_token_stops(self, token: int) -> bool:
        if self._on_token is None:
            return False
        keep_going = self._on_token(token)
        return keep_going is not None and not keep_going

    def _token_logprob(self, scored) -> TokenLogprob:
        token, logprob, top = scored
        text = self._decode_token
        return TokenLogprob(token, text(token), logprob, [(a, text(a), lp) for a, lp in top])


def drive(streams: Sequence[RequestStream], on_delta=None, cancel=None, poll_seconds=0.05) -> None:
    """Consumes the streams to their end on this thread, calling ``on_delta(index, delta)``.

    Waits without the GIL, waking at least every ``poll_seconds``, so Ctrl-C (KeyboardInterrupt)
    and ``cancel`` (a CancelToken, also passed to the streams) are noticed within a step; either
    way, and on any exception, the requests still running are cancelled and their memory freed.
    When nothing reads the tokens as they come, it sleeps until each request finishes.
    """
    pending = list(range(len(streams)))
    quiet = on_delta is None and cancel is None and not any(s.reads_each_token for s in streams)
    try:
        while pending:
            streams[pending[0]].request.wait(poll_seconds, until_finished=quiet)
            if cancel is not None and cancel.cancelled:
                for i in pending:
                    streams[i].request.cancel()
            still = []
            for i in pending:
                delta = streams[i].poll()
                if delta is not None and on_delta is not None:
                    on_delta(i, delta)
                if not streams[i].done:
                    still.append(i)
            pending = still
    finally:
        close([streams[i] for i in pending])


def close(streams: Sequence[RequestStream]) -> None:
    """Cancels the streams' requests and waits (one engine step) until their memory is free."""
    for stream in streams:
        stream.request.cancel()
    for stream in streams:
        while not stream.request.finished:
            stream.request.wait(0.05)
