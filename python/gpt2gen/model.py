"""A loaded model and its tokenizer: text in, text out, with transformers' keyword names.

``GPT2`` drives the C++ engine one step at a time (each step runs without the GIL and advances
every sequence of the batch by one token); between steps it turns tokens into text, matches stop
strings and feeds the stream. Token choice (sampling, penalties, EOS) happens in C++.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from . import _core
from .engine import generation_options, token_count


@dataclass
class TokenLogprob:
    token: int
    text: str
    logprob: float
    # The most likely alternatives at this step: (token, text, logprob), best first.
    top: list = field(default_factory=list)


@dataclass
class Completion:
    text: str
    token_ids: list  # the new ids, including a final EOS id if one stopped the generation
    finish_reason: str  # "length", "eos", "stop" (a stop string) or "cancelled"
    logprobs: Optional[list] = None  # TokenLogprob per new token, when asked for

    def __str__(self) -> str:
        return self.text


@dataclass
class Score:
    token_ids: list  # the scored tokens: every token after the first
    logprobs: np.ndarray  # log p(token | the tokens before it)

    @property
    def total(self) -> float:
        return float(np.sum(self.logprobs))

    @property
    def perplexity(self) -> float:
        return float(np.exp(-np.mean(self.logprobs))) if len(self.logprobs) else float("nan")


class _TextAssembler:
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


class GPT2:
    """A GPT-2 model (weights viewed in place) with its encoder.

    >>> model = GPT2.from_pretrained("gpt2")               # or a local directory
    >>> model.generate("Alan Turing theorized that", max_new_tokens=40).text
    >>> for piece in model.stream("Once upon a time", max_new_tokens=40, temperature=0.8, seed=1):
    ...     print(piece, end="", flush=True)
    >>> model.score("Hello world").perplexity

    A ``GPT2`` may be shared by threads: each call has its own generation state.
    """

    def __init__(self, encoder, hparams: dict, params: dict):
        self.encoder = encoder
        self.hparams = hparams
        self.params = params
        self.engine = _core.Model(params, hparams["n_head"])
        self.eos_token_id = getattr(encoder, "eos_token_id", None)

    @classmethod
    def from_pretrained(cls, name_or_path, models_dir=None, **load_options) -> "GPT2":
        """A model name (``gpt2`` ... ``gpt2-xl``, ``124M`` ... ``1558M``) or a local directory."""
        from .checkpoint import load_pretrained

        return cls(*load_pretrained(name_or_path, models_dir, **load_options))

    @classmethod
    def exercise(cls) -> "GPT2":
        """The exercise's dummy model, with the parameters ``gen_text`` uses (seed 42)."""
        from .exercise import seeded_exercise_model

        return cls(*seeded_exercise_model())

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    def encode(self, text: str) -> list[int]:
        return list(self.encoder.encode(text))

    def decode(self, ids) -> str:
        return self.encoder.decode(list(ids))

    def generate(
        self,
        prompt: Union[str, Sequence[str]],
        max_new_tokens: int = 50,
        *,
        do_sample: Optional[bool] = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Union[int, Sequence[int], None] = None,
        eos_token_id: Union[int, Sequence[int], None] = None,
        ignore_eos: bool = False,
        stop_strings: Union[str, Sequence[str], None] = None,
        logprobs: Optional[int] = None,
        context_overflow: str = "error",
        on_text: Optional[Callable] = None,
    ) -> Union[Completion, list]:
        """Continues ``prompt`` (or each prompt of a list, batched) by up to ``max_new_tokens``.

        Greedy by default. ``temperature > 0`` samples (``do_sample=False`` forces greedy,
        ``do_sample=True`` with temperature 0 samples at temperature 1). Generation of a sequence
        stops at ``max_new_tokens``, at the encoder's end-of-text token (or ``eos_token_id``;
        ``ignore_eos=True`` generates through it) or when a stop string appears in its text
        (the text is cut before it). ``logprobs=N`` records each token's log-probability and
        its N most likely alternatives (after penalties and temperature, before truncation).
        ``on_text(piece)`` (``on_text(index, piece)`` for a list) sees the text as it grows.
        """
        batch = isinstance(prompt, (list, tuple))
        prompts = list(prompt) if batch else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompt must be a str or a non-empty list of str")
        callback = on_text
        if on_text is not None and not batch:
            callback = lambda _, piece: on_text(piece)  # noqa: E731
        completions = self._run(prompts, max_new_tokens, callback, dict(
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, seed=seed, eos_token_id=eos_token_id,
            ignore_eos=ignore_eos, stop_strings=stop_strings, logprobs=logprobs,
            context_overflow=context_overflow))
        return completions if batch else completions[0]

    def stream(self, prompt: str, max_new_tokens: int = 50, **options) -> Iterator[str]:
        """Yields the text of ``generate(prompt, ...)`` as it is produced.

        Pieces never split a UTF-8 character and join to exactly ``generate(...).text``.
        Leaving the loop early (``break``) frees the generation at once.
        """
        if not isinstance(prompt, str):
            raise TypeError("stream() takes one prompt (a str); batch with generate(on_text=...)")
        generation, assemblers = self._start([prompt], max_new_tokens, options)
        try:
            for _, piece in self._pieces(generation, assemblers):
                yield piece
        finally:
            del generation  # the KV cache goes now, not when the iterator is collected

    def score(self, text_or_ids: Union[str, Sequence[int]]) -> Score:
        """Per-token log-probabilities of a text (or ids): log p(t_i | t_<i) for i >= 1.

        The first token has no context and is not scored; prepend the end-of-text token to
        score it as GPT-2 would the start of a document.
        """
        ids = self.encode(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
        return Score(token_ids=ids[1:], logprobs=self.engine.score(ids))

    # --- the loop ---------------------------------------------------------------------------

    def _start(self, prompts, max_new_tokens, options):
        options = dict(options)
        stop_strings = options.pop("stop_strings", None)
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        stop_strings = list(stop_strings or [])
        if not all(isinstance(s, str) for s in stop_strings):
            raise TypeError("stop_strings must be a str or a list of str")
        do_sample = options.pop("do_sample", None)
        if do_sample is False:
            options["temperature"] = 0.0
        elif do_sample and not options.get("temperature"):
            options["temperature"] = 1.0
        eos = options.pop("eos_token_id", None)
        if options.pop("ignore_eos", False):
            eos = None
        elif eos is None:
            eos = self.eos_token_id
        options = generation_options(len(prompts), eos_token_id=eos, **options)
        n_new = token_count(max_new_tokens, "max_new_tokens")
        generation = self.engine.start([self.encode(p) for p in prompts], n_new, options)
        eos_ids = options["eos_token_ids"]
        assemblers = [_TextAssembler(self.encoder, stop_strings, eos_ids) for _ in prompts]
        return generation, assemblers

    @staticmethod
    def _pieces(generation, assemblers):
        """Steps the generation, yielding (sequence, piece) for every non-empty piece of text."""
        while not generation.done:
            for i, token in generation.step():
                piece = assemblers[i].push(token)
                if assemblers[i].stopped:
                    generation.stop(i)
                if piece:
                    yield i, piece
        for i, assembler in enumerate(assemblers):
            piece = assembler.finish()
            if piece:
                yield i, piece

    def _run(self, prompts, max_new_tokens, on_text, options) -> list:
        generation, assemblers = self._start(prompts, max_new_tokens, options)
        for i, piece in self._pieces(generation, assemblers):
            if on_text is not None:
                on_text(i, piece)
        want_logprobs = options.get("logprobs") is not None
        return [self._completion(generation, i, a, want_logprobs) for i, a in enumerate(assemblers)]

    def _completion(self, generation, i, assembler, want_logprobs) -> Completion:
        reason = "stop" if assembler.stopped else generation.finish_reason(i)
        logprobs = None
        if want_logprobs:
            text = lambda t: self.decode([t])  # noqa: E731
            logprobs = [TokenLogprob(t, text(t), lp, [(a, text(a), alp) for a, alp in top])
                        for t, lp, top in generation.logprobs(i)]
        return Completion(assembler.text, generation.generated(i), reason, logprobs)
