"""A loaded model and its tokenizer: text in, text out, with transformers' keyword names.

Every generation runs on the model's scheduler (continuous batching, on its own thread without
the GIL): calls from several threads, streams and the asyncio engine share its batch, and each
request's output is the same as if it ran alone. The calling thread turns tokens into text,
matches stop strings and feeds the stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Callable, Optional, Union

from . import _core
from .options import generation_options, seeds
from .results import Completion, Delta, Score, TokenLogprob
from .scheduler import SchedulerHost
from .text_stream import RequestStream, TextAssembler, close, drive

__all__ = ["GPT2", "Completion", "Delta", "Score", "TokenLogprob", "TextAssembler"]
_TextAssembler = TextAssembler  # the name the tests and older code use


class GPT2:
    """A GPT-2 model (weights viewed in place) with its encoder.

    >>> model = GPT2.from_pretrained("gpt2")               # or a local directory
    >>> model.generate("Alan Turing theorized that", max_new_tokens=40).text
    >>> for piece in model.stream("Once upon a time", max_new_tokens=40, temperature=0.8, seed=1):
    ...     print(piece, end="", flush=True)
    >>> model.score("Hello world").perplexity

    A ``GPT2`` may be shared by threads: their generations join one running batch.
    ``max_batch`` sequences decode together; ``step_tokens`` bounds the positions of one forward
    pass (decode rows plus chunks of new prompts). ``kv_cache_dtype="bf16"`` (float32 weights,
    packed or not) keeps the KV cache's keys and values as bf16: half the cache's memory and
    half the bytes attention reads per token at long contexts, for a small accuracy cost (README,
    "Accuracy"); the default ``"float32"`` keeps them as computed.
    """

    def __init__(self, encoder, hparams: dict, params: dict, *, max_batch: int = 16,
                 max_queue: int = 256, step_tokens: int = 256, kv_cache_dtype: str = "float32"):
        self.encoder = encoder
        self.hparams = hparams
        self.params = params
        self.engine = _core.Model(params, hparams["n_head"], kv_cache_dtype)
        self.eos_token_id = getattr(encoder, "eos_token_id", None)
        self.scheduler = SchedulerHost(self.engine, max_batch=max_batch, max_queue=max_queue,
                                       step_tokens=step_tokens)

    @classmethod
    def from_pretrained(cls, name_or_path, models_dir=None, *, max_batch: int = 16,
                        max_queue: int = 256, step_tokens: int = 256,
                        kv_cache_dtype: str = "float32", **load_options) -> GPT2:
        """A model name (``gpt2`` ... ``gpt2-xl``, ``124M`` ... ``1558M``) or a local directory.

        ``load_options`` go to ``load_pretrained`` (``dtype``, ``allow_pickle``); the others to
        ``GPT2(...)``.
        """
        from .checkpoint import load_pretrained

        _core.check_kv_cache_dtype(kv_cache_dtype)  # refused before anything is read
        return cls(*load_pretrained(name_or_path, models_dir, **load_options),
                   max_batch=max_batch, max_queue=max_queue, step_tokens=step_tokens,
                   kv_cache_dtype=kv_cache_dtype)

    @classmethod
    def exercise(cls) -> GPT2:
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

    def close(self) -> None:
        """Cancels the generations in flight and stops the scheduler's thread (a later call
        starts a new one). Also done at interpreter exit."""
        self.scheduler.close()

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
        logit_bias: Optional[dict] = None,
        seed: Union[int, Sequence[int], None] = None,
        eos_token_id: Union[int, Sequence[int], None] = None,
        ignore_eos: bool = False,
        stop_strings: Union[str, Sequence[str], None] = None,
        logprobs: Optional[int] = None,
        prompt_logprobs: Optional[int] = None,
        context_overflow: str = "error",
        on_text: Optional[Callable] = None,
    ) -> Union[Completion, list]:
        """Continues ``prompt`` (or each prompt of a list, batched) by up to ``max_new_tokens``.

        Greedy by default. ``temperature > 0`` samples (``do_sample=False`` forces greedy,
        ``do_sample=True`` with temperature 0 samples at temperature 1). Generation of a sequence
        stops at ``max_new_tokens``, at the encoder's end-of-text token (or ``eos_token_id``;
        ``ignore_eos=True`` generates through it) or when a stop string appears in its text
        (the text is cut before it). ``logprobs=N`` records each token's log-probability and
        its N most likely alternatives (after penalties and temperature, before truncation);
        ``prompt_logprobs=N`` does the same for the prompt's tokens from the model's raw
        distribution (as ``score``). ``logit_bias`` ({token id: bias in [-100, 100]}) is added to
        the logits first. ``on_text(piece)`` (``on_text(index, piece)`` for a list) sees the text
        as it grows. Ctrl-C cancels the generation and frees its memory.
        """
        batch = isinstance(prompt, (list, tuple))
        prompts = list(prompt) if batch else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompt must be a str or a non-empty list of str")
        options = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                       min_p=min_p, repetition_penalty=repetition_penalty,
                       presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                       logit_bias=logit_bias, seed=seed, eos_token_id=eos_token_id,
                       ignore_eos=ignore_eos, stop_strings=stop_strings, logprobs=logprobs,
                       prompt_logprobs=prompt_logprobs, context_overflow=context_overflow)
        streams = self._submit([self.encode(p) for p in prompts], max_new_tokens, options)
        callback = None
        if on_text is not None:
            callback = (lambda i, d: on_text(i, d.text) if d.text else None) if batch else \
                (lambda _, d: on_text(d.text) if d.text else None)
        drive(streams, callback)
        completions = [s.completion() for s in streams]
        return completions if batch else completions[0]

    def stream(self, prompt: str, max_new_tokens: int = 50, **options) -> Iterator[str]:
        """Yields the text of ``generate(prompt, ...)`` as it is produced.

        Pieces never split a UTF-8 character and join to exactly ``generate(...).text``.
        Leaving the loop early (``break``) cancels the generation and frees it at once.
        """
        for delta in self.stream_deltas(prompt, max_new_tokens, **options):
            if delta.text:
                yield delta.text

    def stream_deltas(self, prompt: Union[str, Sequence[int]], max_new_tokens: int = 50,
                      **options) -> Iterator[Delta]:
        """Like ``stream``, with each piece's token ids (and logprobs, when asked for)."""
        if isinstance(prompt, str):
            ids = self.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and not any(isinstance(p, str) for p in prompt):
            ids = list(prompt)
        else:
            raise TypeError("stream() takes one prompt (a str or token ids); batch with "
                            "generate(on_text=...)")
        (stream,) = self._submit([ids], max_new_tokens, options)
        try:
            while not stream.done:
                stream.request.wait(0.05)
                delta = stream.poll()
                if delta is not None:
                    yield delta
        finally:
            close([stream])

    def score(self, text_or_ids: Union[str, Sequence[int]]) -> Score:
        """Per-token log-probabilities of a text (or ids): log p(t_i | t_<i) for i >= 1.

        The first token has no context and is not scored; prepend the end-of-text token to
        score it as GPT-2 would the start of a document.
        """
        ids = self.encode(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
        return Score(token_ids=ids[1:], logprobs=self.engine.score(ids))

    # --- requests ---------------------------------------------------------------------------

    def _submit(self, prompt_ids: list, max_new_tokens, options: dict,
                bounded: bool = False) -> list[RequestStream]:
        """Queues one request per prompt on the scheduler; returns their streams."""
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
        seed_values = seeds(options.pop("seed", None), len(prompt_ids))
        core_options = generation_options(max_new_tokens, eos_token_id=eos, **options)
        requests = self.scheduler.scheduler.submit(prompt_ids, [core_options], seeds=seed_values,
                                                   bounded=bounded)
        eos_ids = list(core_options.eos_token_ids)
        return [RequestStream(r, TextAssembler(self.encoder, stop_strings, eos_ids),
                              self._token_text, list(ids),
                              want_logprobs=options.get("logprobs") is not None,
                              want_prompt_logprobs=options.get("prompt_logprobs") is not None)
                for r, ids in zip(requests, prompt_ids)]

    def _token_text(self, token: int) -> str:
        return self.decode([token])
