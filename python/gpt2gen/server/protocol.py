"""The wire format: OpenAI's request bodies as pydantic models, and the response objects.

Requests are validated strictly, as OpenAI does: unknown fields, wrong types ("5" for an int,
``true`` for a number), NaN/Infinity and out-of-range values are 400s naming the field. ``null``
means "the default" wherever OpenAI allows it. Responses are plain dicts built here, in OpenAI's
field order.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import APIError, invalid

MAX_LOGPROBS = 20  # OpenAI's limit for logprobs / top_logprobs
MAX_STOP = 16  # stop strings per request (each is searched after every token)
MAX_N = 128  # choices per prompt, OpenAI's limit
LOGPROB_FLOOR = -9999.0  # what -inf is sent as: JSON has no infinity (vLLM sends the same)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def check(self) -> None:
        """Rules across fields, after each field is valid on its own."""


class StreamOptions(_Strict):
    include_usage: Optional[bool] = False


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stop_list(value) -> list:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ValueError("must be a string or a list of strings")
    if len(stops) > MAX_STOP:
        raise ValueError(f"at most {MAX_STOP} stop strings are supported, got {len(stops)}")
    return stops


class _Sampling(_Strict):
    """The fields completions and chat completions share (OpenAI's plus vLLM's extensions)."""

    model: Optional[str] = None
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: Optional[int] = Field(None, ge=1, le=MAX_N)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Any] = None
    seed: Optional[int] = Field(None, ge=0, lt=2**64)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None  # accepted and ignored, as the field is only for OpenAI's abuse tracking
    # extensions (vLLM's names): top_k -1 or 0 = off
    top_k: Optional[int] = Field(None, ge=-1, lt=2**31)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=100)
    ignore_eos: Optional[bool] = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        return _stop_list(value)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value):  # keys are checked against the vocabulary when the request runs
        for key, bias in (value or {}).items():
            if not -100 <= bias <= 100:
                raise ValueError(f"biases must be in [-100, 100], got {bias} for token {key}")
        return value

    def check_stream_options(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: Any = Field(...)
    max_tokens: Optional[int] = Field(None, ge=0, lt=2**31)
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Optional[bool] = False
    best_of: Optional[int] = Field(None, ge=1, le=MAX_N)
    suffix: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        """Normalized to a list of prompts, each a str or a list of token ids."""
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            if all(isinstance(v, str) for v in value):
                return list(value)
            if all(_is_token(v) for v in value):
                return [list(value)]
            if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
                return [list(v) for v in value]
        raise ValueError("must be a string, a list of strings, a list of token ids or a list of "
                         "lists of token ids (none of them empty)")

    def check(self) -> None:
        self.check_stream_options()
        if self.suffix:
            raise invalid("suffix", "suffix is not supported: GPT-2 only continues text, it cannot insert")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise invalid("best_of", f"best_of must be null or equal to n ({self.n or 1}), got {self.best_of}")


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = Field(...)
    name: Optional[str] = None  # accepted; the templates do not use names

    @field_validator("content")
    @classmethod
    def _text(cls, value) -> str:
        """A string, or text parts joined (OpenAI's ``[{"type": "text", "text": ...}]``)."""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(
                isinstance(p, dict) and set(p) == {"type", "text"} and p["type"] == "text"
                and isinstance(p["text"], str) for p in value):
            return "".join(p["text"] for p in value)
        raise ValueError("must be a string or a list of text parts ({\"type\": \"text\", \"text\": ...}); "
                         "GPT-2 reads text only")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=0, lt=2**31)  # deprecated by OpenAI, still sent by clients
    max_completion_tokens: Optional[int] = Field(None, ge=0, lt=2**31)
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)

    def check(self) -> None:
        self.check_stream_options()
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs", "top_logprobs needs logprobs set to true")


class TokenizeRequest(_Strict):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: Optional[bool] = True  # GPT-2 adds none; accepted for vLLM's clients
    add_generation_prompt: Optional[bool] = True
    return_token_strs: Optional[bool] = False

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise invalid("prompt", "give exactly one of prompt and messages")


class DetokenizeRequest(_Strict):
    model: Optional[str] = None
    tokens: list[int]


# --- parsing -----------------------------------------------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse(model_class, body: bytes):
    """A validated request from a raw body, or an APIError 400 saying what is wrong."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise APIError(400, f"We could not parse the JSON body of your request: {_short(error)}",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object", code="invalid_json")
    try:
        request = model_class.model_validate(data)
    except ValidationError as error:
        raise validation_error(error) from None
    request.check()
    return request


def validation_error(error: ValidationError) -> APIError:
    first = error.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    kind, message = first["type"], first["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return invalid(param, f"Unrecognized request argument supplied: {param}", "unknown_parameter")
    if kind == "missing":
        return invalid(param, f"Missing required parameter: '{param}'", "missing_required_parameter")
    return invalid(param, f"Invalid value for '{param}': {message} (got {_short(first.get('input'))})")


def _short(value, limit: int = 80) -> str:
    text = str(value) if isinstance(value, Exception) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- responses ---------------------------------------------------------------------------------


def finite(logprob: float) -> float:
    """A log-probability JSON can carry: -inf (a token the sampler excluded) becomes -9999."""
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(kind: str, request_id: str, created: int, model: str, choices: list, **extra) -> dict:
    """The fields every completion response and chunk starts with."""
    return {"id": request_id, "object": kind, "created": created, "model": model, "choices": choices,
            **extra}


def now() -> int:
    return int(time.time())
