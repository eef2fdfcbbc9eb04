"""The files of ``gpt2gen batch``: JSON Lines requests in, one result line per request out.

Two input formats, told apart by the first line:

* **plain**: ``{"prompt": text or token ids, "sampling_params": {...}, ...}``: any other fields
  ride along; the output line is the input line plus the output columns of
  ``gpt2gen.batch_rows`` (``generated_text``, ..., ``error``).
* **OpenAI Batch API** (``/v1/completions``): ``{"custom_id", "method": "POST", "url":
  "/v1/completions", "body": {"prompt", "max_tokens", ...}}``; the output line is shaped like
  OpenAI's batch output: ``{"id", "custom_id", "response": {"status_code", "request_id",
  "body": <a text_completion>}, "error": null}``, a failed request a 400 whose body is OpenAI's
  error object.

Outputs are written in input order, so a rerun resumes after the last complete line (a line cut
by an interruption is removed), after checking that those lines answer this input's requests.
Non-finite numbers are written as null (JSON has no infinity).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from .batch_rows import ERROR_COLUMN, GENERATE_COLUMNS, SAMPLING_PARAMS, SCORE_COLUMNS

PLAIN, OPENAI = "plain", "openai"
COMPLETIONS_URL = "/v1/completions"
OUTPUT_FIELDS = frozenset(GENERATE_COLUMNS + SCORE_COLUMNS + (ERROR_COLUMN,))

# Body fields of /v1/completions beyond the sampling parameters: accepted and not used, or
# accepted only with the value that means "off" (the features are not implemented here).
_BODY_IGNORED = ("model", "user")
_BODY_OFF = {
    "stream": (None, False),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None,),
}


class BatchFileError(ValueError):
    """An input or output file that cannot be used (the message names the file and line)."""


@dataclass
class Request:
    line: int  # 1-based line number in the input file
    record: dict  # the line as read
    prompt: Any = None
    sampling_params: Optional[dict] = None
    error: Optional[str] = None  # a problem found before running (the request is not run)


def read_requests(path) -> tuple[str, list[Request]]:
    """``(format, requests)`` of a JSON Lines file; blank lines are skipped."""
    requests: list[Request] = []
    fmt = None
    try:
        with open(path, encoding="utf-8") as f:
            for number, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except ValueError as e:
                    raise BatchFileError(f"{path}:{number}: not a JSON line ({e})") from None
                if not isinstance(record, dict):
                    raise BatchFileError(
                        f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
                    )
                if fmt is None:
                    fmt = OPENAI if "custom_id" in record and "body" in record else PLAIN
                requests.append(
                    _openai_request(path, number, record)
                    if fmt == OPENAI
                    else _plain_request(number, record)
                )
    except (OSError, UnicodeDecodeError) as e:
        raise BatchFileError(f"{path}: cannot read it: {e}") from None
    return fmt or PLAIN, requests


def _plain_request(number: int, record: dict) -> Request:
    if "prompt" not in record:
        return Request(number, record, error="the line has no 'prompt'")
    return Request(number, record, record["prompt"], record.get("sampling_params"))


def _openai_request(path, number: int, record: dict) -> Request:
    if not isinstance(record.get("custom_id"), str):
        raise BatchFileError(
            f"{path}:{number}: an OpenAI batch line needs a string 'custom_id' "
            "(the first line has one, so this file is read as an OpenAI batch)"
        )
    request = Request(number, record)
    if record.get("method") != "POST" or record.get("url") != COMPLETIONS_URL:
        request.error = (
            f"only POST {COMPLETIONS_URL} is supported, got {record.get('method')!r} "
            f"{record.get('url')!r}"
        )
        return request
    body = record.get("body")
    if not isinstance(body, dict):
        request.error = "'body' must be a JSON object"
        return request
    request.error = _body_error(body)
    if request.error is None:
        request.prompt = body["prompt"]
        request.sampling_params = {
            k: v for k, v in body.items() if k in SAMPLING_PARAMS or k == "n"
        }
    return request


def _body_error(body: dict) -> Optional[str]:
    """Why a completions body cannot run here, or None."""
    for key, value in body.items():
        if key == "prompt" or key in _BODY_IGNORED or key in SAMPLING_PARAMS or key == "n":
            continue
        if key == "logit_bias":
            if value:
                return "logit_bias is not supported"
        elif key in _BODY_OFF:
            if value not in _BODY_OFF[key]:
                return f"{key}={json.dumps(value)} is not supported in a batch"
        else:
            return f"unknown field {key!r} in the body of a completions request"
    prompt = body.get("prompt")
    if prompt is None:
        return "the body has no 'prompt'"
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return "a list of prompts: give each prompt a line (and a custom_id) of its own"
    return None


def _finite(value):
    """``value`` with every NaN or infinity replaced by None (for JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def output_record(fmt: str, request: Request, outputs: dict, *, model_name: str) -> dict:
    """The output line of one request, from the output columns of its row."""
    if fmt == PLAIN:
        return _finite({**request.record, **outputs})
    n = request.line
    line = {"id": f"batch_req_{n}", "custom_id": request.record["custom_id"]}
    error = outputs.get(ERROR_COLUMN)
    if error is not None:
        body = {
            "error": {
                "message": error,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        line["response"] = {"status_code": 400, "request_id": f"req_{n}", "body": body}
    else:
        model = request.record["body"].get("model")
        completion = {
            "id": f"cmpl-{n}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model if isinstance(model, str) else model_name,
            "choices": [
                {
                    "index": 0,
                    "text": outputs["generated_text"],
                    "finish_reason": outputs["finish_reason"],
                    "logprobs": _openai_logprobs(outputs["logprobs"]),
                }
            ],
            "usage": {
                "prompt_tokens": outputs["num_input_tokens"],
                "completion_tokens": outputs["num_generated_tokens"],
                "total_tokens": outputs["num_input_tokens"] + outputs["num_generated_tokens"],
            },
        }
        line["response"] = {"status_code": 200, "request_id": f"req_{n}", "body": completion}
    line["error"] = None
    return _finite(line)


def _openai_logprobs(logprobs: Optional[list]) -> Optional[dict]:
    """OpenAI's legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    if logprobs is None:
        return None
    offsets, offset = [], 0
    for token in logprobs:
        offsets.append(offset)
        offset += len(token["token"])
    return {
        "tokens": [t["token"] for t in logprobs],
        "token_logprobs": [t["logprob"] for t in logprobs],
        "top_logprobs": [{a["token"]: a["logprob"] for a in t["top_logprobs"]} for t in logprobs],
        "text_offset": offsets,
    }


def dumps(record: dict) -> str:
    return json.dumps(record, allow_nan=False)


def answered(output, fmt: str, requests: list[Request], input_name: str) -> int:
    """How many requests ``output`` already answers (0 if it does not exist).

    A last line without its newline (cut by an interruption) is removed from the file. Every
    complete line must answer the request at its position (same custom_id; in the plain format,
    the same input fields); otherwise the output belongs to another input and is not touched.
    """
    count = complete = 0  # lines checked; bytes up to the end of the last complete one
    try:
        with open(output, "rb") as f:
            for text in f:
                if not text.endswith(b"\n"):
                    break  # only the last line can lack its newline
                if count == len(requests):
                    raise BatchFileError(
                        f"{output} has more lines than {input_name} has requests "
                        f"({len(requests)}): it is not this input's output; choose another --output"
                    )
                if not _answers(fmt, text, requests[count]):
                    raise BatchFileError(
                        f"{output}:{count + 1} does not answer {input_name}:{requests[count].line}, so "
                        f"{output} is not the output of this input; choose another --output (or delete it "
                        "to start over)"
                    )
                count += 1
                complete += len(text)
            cut = f.tell() > complete
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise BatchFileError(f"{output}: cannot read it: {e}") from None
    if cut:
        os.truncate(output, complete)
    return count


def _answers(fmt: str, text: bytes, request: Request) -> bool:
    try:
        record = json.loads(text)
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    if fmt == OPENAI:
        return record.get("custom_id") == request.record["custom_id"]
    return all(
        record.get(k) == _finite(v) for k, v in request.record.items() if k not in OUTPUT_FIELDS
    )
