"""What a generation gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class TokenLogprob:
    token: int
    text: str
    logprob: float
    # The most likely alternatives at this step: (token, text, logprob), best first.
    top: list = field(default_factory=list)


@dataclass
class Delta:
    """What one request produced since the last delta."""

    text: str  # never splits a UTF-8 character; the deltas join to the final text
    token_ids: list  # new ids since the last delta
    logprobs: Optional[list] = None  # TokenLogprob per id in token_ids, when asked for


@dataclass
class Completion:
    text: str
    token_ids: list  # the new ids, including a final EOS id if one stopped the generation
    finish_reason: str  # "length", "eos", "stop" (a stop string) or "cancelled"
    logprobs: Optional[list] = None  # TokenLogprob per new token, when asked for
    prompt_token_ids: Optional[list] = None
    # With prompt_logprobs: None for the first prompt token, then a TokenLogprob per token.
    prompt_logprobs: Optional[list] = None

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
