"""Rows in, output columns out: the per-row work of ``gpt2gen batch`` and ``gpt2gen.ray_data``.

A row is a ``prompt`` (text, or token ids) with optional ``sampling_params`` named as in OpenAI's
``/v1/completions`` (``max_tokens``, ``temperature``, ``stop``, ...). They override the job's
defaults, which override OpenAI's (16 tokens, temperature 1); a null value means "not set" (Ray
Data fills the keys one row lacks and another has with nulls). ``RowRunner`` runs a batch of rows
through the public ``GPT2`` API: rows with the same settings (seeds aside) are one
``GPT2.generate`` call, one engine batch, and each row's result is exactly what ``GPT2.generate``
gives it alone. A row that cannot run (a prompt longer than the context, a bad setting) gets an
``error`` and no output, unless ``fail_fast``.

No Ray here: ``import gpt2gen`` never imports Ray, and the command runs in-process without it.
"""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np

from .engine import token_count

# OpenAI's name -> (GPT2.generate's keyword, OpenAI's default). top_k, min_p, repetition_penalty
# and ignore_eos are vLLM's extensions of the same API.
SAMPLING_PARAMS: dict[str, tuple[str, Any]] = {
    "max_tokens": ("max_new_tokens", 16),
    "temperature": ("temperature", 1.0),
    "top_p": ("top_p", 1.0),
    "top_k": ("top_k", 0),
    "min_p": ("min_p", 0.0),
    "presence_penalty": ("presence_penalty", 0.0),
    "frequency_penalty": ("frequency_penalty", 0.0),
    "repetition_penalty": ("repetition_penalty", 1.0),
    "seed": ("seed", None),
    "stop": ("stop_strings", None),
    "logprobs": ("logprobs", None),
    "ignore_eos": ("ignore_eos", False),
}
# OpenAI's n (completions per prompt): only 1, one completion per row.
_ONE_COMPLETION = "n"

TASKS = ("generate", "score")
GENERATE_COLUMNS = (
    "generated_text",
    "generated_token_ids",
    "num_generated_tokens",
    "num_input_tokens",
    "finish_reason",
    "logprobs",
)
SCORE_COLUMNS = (
    "num_input_tokens",
    "prompt_token_ids",
    "prompt_logprobs",
    "total_logprob",
    "perplexity",
)
ERROR_COLUMN = "error"

# gpt2gen's reasons -> OpenAI's: the end-of-text token and a stop string both "stop".
_FINISH_REASONS = {"length": "length", "eos": "stop", "stop": "stop"}
# What a row can do wrong; anything else is a bug and fails the job.
_ROW_ERRORS = (ValueError, TypeError, MemoryError, OverflowError)


class RowError(ValueError):
    """A row that failed while ``fail_fast`` was asked for (the message names the row)."""


def output_columns(task: str, fail_fast: bool) -> tuple[str, ...]:
    columns = GENERATE_COLUMNS if task == "generate" else SCORE_COLUMNS
    return columns if fail_fast else columns + (ERROR_COLUMN,)


def check_sampling_params(params: Optional[Mapping], where: str = "sampling_params") -> dict:
    """The set (non-null) entries of ``params``; unknown keys are an error naming them."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise TypeError(
            f"{where} must be an object of OpenAI sampling parameters, got {type(params).__name__}"
        )
    known = list(SAMPLING_PARAMS) + [_ONE_COMPLETION]
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ValueError(f"{where}: unknown parameter {unknown[0]!r} (known: {', '.join(known)})")
    return {k: v for k, v in params.items() if v is not None}


def generate_options(
    sampling_params: Optional[Mapping], defaults: Optional[Mapping] = None
) -> dict:
    """``GPT2.generate``'s keywords for one row: OpenAI's defaults < ``defaults`` < the row's.

    Types and names are checked here, with OpenAI's names in the messages; value ranges are
    checked by the engine when the row runs.
    """
    merged = {
        **check_sampling_params(defaults, "default sampling_params"),
        **check_sampling_params(sampling_params),
    }
    n = merged.pop(_ONE_COMPLETION, 1)
    if isinstance(n, bool) or n != 1:
        raise ValueError(
            f"sampling_params.n must be 1 (one completion per row; repeat the row for more), got {n!r}"
        )
    options = {
        keyword: merged.get(name, default) for name, (keyword, default) in SAMPLING_PARAMS.items()
    }
    options["max_new_tokens"] = token_count(options["max_new_tokens"], "sampling_params.max_tokens")
    stop = options["stop_strings"]
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        isinstance(stop, (bytes, Mapping))
        or not isinstance(stop, Sequence)
        or not all(isinstance(s, str) for s in stop)
    ):
        raise TypeError(f"sampling_params.stop must be a string or a list of strings, got {stop!r}")
    options["stop_strings"] = list(stop) if stop else None
    if not isinstance(options["ignore_eos"], bool):
        raise TypeError(
            f"sampling_params.ignore_eos must be true or false, got {options['ignore_eos']!r}"
        )
    if options["top_k"] == -1:  # vLLM's other spelling of "off"
        options["top_k"] = 0
    return options


def check_job(sampling_params: Optional[Mapping], task: str) -> None:
    """A job's settings, checked once rather than on every row."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "score" and check_sampling_params(sampling_params):
        raise ValueError(
            "sampling_params do not apply to task='score' (scores use the model's own distribution)"
        )
    generate_options(None, sampling_params)


def prompt_ids(model, prompt) -> list[int]:
    """The token ids of a row's prompt: text is encoded, a list of ids is checked and kept."""
    if isinstance(prompt, str):
        return model.encode(prompt)
    if isinstance(prompt, np.ndarray) and prompt.ndim == 1:
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)) and all(
        isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt
    ):
        return [int(t) for t in prompt]
    raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")


def prompt_text(model, prompt) -> str:
    """The text ``GPT2.generate`` is given for a row's prompt.

    ``GPT2.generate`` takes text, so a token-id prompt is generated from its decoded text, which
    is exact only when that text encodes back to the same ids; other id sequences are refused
    rather than silently generated from different ids.
    """
    if isinstance(prompt, str):
        return prompt
    ids = prompt_ids(model, prompt)
    text = model.decode(ids)  # ValueError for an id outside the vocabulary
    if model.encode(text) != ids:
        raise ValueError(
            "prompt: these token ids are not the tokenizer's encoding of their text, "
            "which is the only form of token-id prompt gpt2gen generates from; pass the text"
        )
    return text


def _settings_key(options: dict, row: int):
    """Rows with equal keys can share an engine batch: the same settings but for the seed."""
    key = tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in options.items() if k != "seed"
    )
    try:
        hash(key)
    except TypeError:  # a value of the wrong type (a dict, ...): alone, the engine names it
        return ("row", row)
    return key


def _error_message(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class RowRunner:
    """Runs batches of rows on one ``GPT2`` model.

    ``sampling_params``: the defaults of every row (OpenAI's names). ``task``: ``"generate"``
    (output columns ``GENERATE_COLUMNS``) or ``"score"`` (``SCORE_COLUMNS``: every prompt token's
    log-probability, the first ``None``, and the perplexity of the text). Unless ``fail_fast``, a
    failed row gets its message in ``error`` (``None`` otherwise) and ``None`` outputs; with it,
    the first failure raises ``RowError``.
    """

    def __init__(
        self,
        model,
        sampling_params: Optional[Mapping] = None,
        *,
        task: str = "generate",
        fail_fast: bool = False,
    ):
        check_job(sampling_params, task)
        self.model = model
        self.defaults = dict(sampling_params or {})
        self.task = task
        self.fail_fast = fail_fast
        self.columns = output_columns(task, fail_fast)

    def run(self, prompts: Sequence, sampling_params: Optional[Sequence] = None) -> list[dict]:
        """One dict of output columns per row, in the rows' order."""
        if sampling_params is None:
            sampling_params = [None] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling_params)} sampling_params")
        results: list[Optional[dict]] = [None] * len(prompts)
        if self.task == "score":
            for i, (prompt, params) in enumerate(zip(prompts, sampling_params)):
                try:
                    results[i] = self._score(prompt, params)
                except _ROW_ERRORS as error:
                    results[i] = self._failed(i, prompt, error)
            return results

        groups: dict[tuple, list] = {}  # settings without the seed -> [(row, text, options)]
        for i, (prompt, params) in enumerate(zip(prompts, sampling_params)):
            try:
                text = prompt_text(self.model, prompt)
                options = generate_options(params, self.defaults)
            except _ROW_ERRORS as error:
                results[i] = self._failed(i, prompt, error)
                continue
            if options["seed"] is None:  # what GPT2.generate draws for an unseeded call
                options["seed"] = secrets.randbits(64)
            groups.setdefault(_settings_key(options, i), []).append((i, text, options))
        # Each group is one engine batch. Groups run side by side: GPT2 may be shared by threads,
        # and its scheduler batches concurrent calls together.
        group_list = list(groups.values())
        if len(group_list) <= 1:
            done = [self._generate(group, prompts) for group in group_list]
        else:
            with ThreadPoolExecutor(len(group_list)) as pool:
                done = list(pool.map(lambda g: self._generate(g, prompts), group_list))
        for outputs in done:
            for i, row in outputs:
                results[i] = row
        return results

    # --- one group / one row ----------------------------------------------------------------

    def _generate(self, group: list, prompts: Sequence) -> list[tuple[int, dict]]:
        _, _, first = group[0]
        options = {k: v for k, v in first.items() if k not in ("max_new_tokens", "seed")}
        try:
            completions = self.model.generate(
                [text for _, text, _ in group],
                first["max_new_tokens"],
                seed=[o["seed"] for _, _, o in group],
                **options,
            )
        except _ROW_ERRORS as error:
            if len(group) == 1:
                i = group[0][0]
                return [(i, self._failed(i, prompts[i], error))]
            # Some row of the batch is at fault: each alone tells which.
            return [out for row in group for out in self._generate([row], prompts)]
        return [
            (i, self._generated(text, completion))
            for (i, text, _), completion in zip(group, completions)
        ]

    def _generated(self, text: str, completion) -> dict:
        logprobs = None
        if completion.logprobs is not None:
            logprobs = [
                {
                    "token": lp.text,
                    "token_id": lp.token,
                    "logprob": float(lp.logprob),
                    "top_logprobs": [
                        {"token": t, "token_id": a, "logprob": float(alp)} for a, t, alp in lp.top
                    ],
                }
                for lp in completion.logprobs
            ]
        row = {
            "generated_text": completion.text,
            "generated_token_ids": list(completion.token_ids),
            "num_generated_tokens": len(completion.token_ids),
            "num_input_tokens": len(self.model.encode(text)),
            "finish_reason": _FINISH_REASONS[completion.finish_reason],
            "logprobs": logprobs,
        }
        return self._complete(row)

    def _score(self, prompt, params) -> dict:
        if check_sampling_params(params):
            raise ValueError("sampling_params do not apply when scoring")
        ids = prompt_ids(self.model, prompt)
        score = self.model.score(ids)
        logprobs = [float(x) for x in score.logprobs]
        row = {
            "num_input_tokens": len(ids),
            "prompt_token_ids": ids,
            "prompt_logprobs": [None] + logprobs,
            "total_logprob": score.total,
            "perplexity": score.perplexity,
        }
        return self._complete(row)

    def _complete(self, row: dict) -> dict:
        if not self.fail_fast:
            row[ERROR_COLUMN] = None
        return row

    def _failed(self, i: int, prompt, error: BaseException) -> dict:
        message = _error_message(error)
        if self.fail_fast:
            shown = repr(prompt) if len(repr(prompt)) <= 60 else repr(prompt)[:57] + "..."
            raise RowError(f"row {i} of the batch (prompt {shown}): {message}") from error
        row = {column: None for column in self.columns}
        row[ERROR_COLUMN] = message
        return row
