"""The reference the batch tests compare with: a row's expected output columns, computed by calling
``GPT2.generate`` / ``GPT2.score`` directly with the row's settings, written out here by hand
(OpenAI's names and defaults mapped to the library's keywords) rather than through the code
under test."""

from __future__ import annotations

import numpy as np

# OpenAI's /v1/completions defaults (what a row gets for what it does not set).
OPENAI_DEFAULTS = {"max_tokens": 16, "temperature": 1.0}
OPENAI_FINISH = {"length": "length", "eos": "stop", "stop": "stop"}

# Rows with per-row settings covering every parameter; each samples with a seed or is greedy, so
# each has one right answer.
VARIED_SAMPLING_PARAMS = [
    None,
    {"temperature": 0.0},
    {"temperature": 0.9, "seed": 11},
    {"temperature": 0.7, "top_p": 0.8, "seed": 12, "max_tokens": 9},
    {"temperature": 1.2, "top_k": 5, "seed": 13},
    {"temperature": 0.8, "min_p": 0.1, "seed": 14, "stop": "e"},
    {"temperature": 0.0, "presence_penalty": 1.5, "frequency_penalty": 0.5, "max_tokens": 20},
    {"temperature": 0.0, "repetition_penalty": 1.3, "stop": ["a", "o"]},
    {"temperature": 0.9, "seed": 15, "logprobs": 2, "max_tokens": 6},
    {"temperature": 0.0, "ignore_eos": True, "max_tokens": 25},
    {"temperature": 0.9, "seed": 16, "n": 1, "top_k": -1},
]
PROMPTS = [
    "the cat sat on the",
    "hello world",
    "once upon a time",
    "a",
    "to be or not to be",
    "she sells sea shells",
    "the rain in spain",
    "quick brown fox",
    "1 2 3 4",
    "what is it",
    "zebra",
]


def generate_kwargs(sampling_params=None, defaults=None) -> dict:
    merged = {**OPENAI_DEFAULTS, **(defaults or {})}
    merged.update({k: v for k, v in (sampling_params or {}).items() if v is not None})
    merged.pop("n", None)
    if merged.get("top_k") == -1:
        merged["top_k"] = 0
    kwargs = {"max_new_tokens": merged.pop("max_tokens")}
    if "stop" in merged:
        kwargs["stop_strings"] = merged.pop("stop")
    kwargs.update(merged)
    return kwargs


def expected_generation(model, prompt, sampling_params=None, defaults=None) -> dict:
    text = prompt if isinstance(prompt, str) else model.decode(prompt)
    c = model.generate(text, **generate_kwargs(sampling_params, defaults))
    logprobs = None
    if c.logprobs is not None:
        logprobs = [
            {
                "token": lp.text,
                "token_id": lp.token,
                "logprob": lp.logprob,
                "top_logprobs": [
                    {"token": t, "token_id": a, "logprob": alp} for a, t, alp in lp.top
                ],
            }
            for lp in c.logprobs
        ]
    return {
        "generated_text": c.text,
        "generated_token_ids": list(c.token_ids),
        "num_generated_tokens": len(c.token_ids),
        "num_input_tokens": len(model.encode(text)),
        "finish_reason": OPENAI_FINISH[c.finish_reason],
        "logprobs": logprobs,
        "error": None,
    }


def expected_score(model, prompt) -> dict:
    ids = model.encode(prompt) if isinstance(prompt, str) else list(prompt)
    s = model.score(ids)
    return {
        "num_input_tokens": len(ids),
        "prompt_token_ids": ids,
        "prompt_logprobs": [None] + [float(x) for x in s.logprobs],
        "total_logprob": float(np.sum(s.logprobs)),
        "perplexity": float(np.exp(-np.mean(s.logprobs))) if len(s.logprobs) else float("nan"),
        "error": None,
    }
