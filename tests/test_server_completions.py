"""/v1/completions through HTTP, against the library: every field, every prompt form, logprobs in
OpenAI's legacy shape, echo, and streaming that joins to exactly the non-streamed answer.

The server runs on a random GPT-2 checkpoint; each answer is compared with
``GPT2.generate`` on the same checkpoint with the same settings (exact equality).
"""

from __future__ import annotations

import json
import math

import httpx
import pytest

import gpt2gen
from gpt2gen.server import ServerConfig, create_app
from serving import (
    MODEL_NAME,
    legacy_logprobs,
    make_model_dir,
    openai_finish,
    running,
    sse_events,
    token_string,
    wait_healthy,
)

pytestmark = pytest.mark.service  # a real server on 127.0.0.1

openai = pytest.importorskip("openai")

EOS = 399


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gpt2gen.GPT2.from_pretrained(make_model_dir(tmp_path_factory.mktemp("completions")))


@pytest.fixture(scope="module")
def url(model):
    with running(create_app(model, ServerConfig(served_model_name=MODEL_NAME, max_batch=8))) as url:
        wait_healthy(url)
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def offline(model, prompt, body: dict, seed_offset: int = 0):
    """What the library gives for an OpenAI request body (OpenAI's defaults restated)."""
    seed = body.get("seed")
    bias = body.get("logit_bias")
    echo_lp = body.get("logprobs") if body.get("echo") else None
    top_k = body.get("top_k", 0)
    return model.generate(
        prompt, body.get("max_tokens", 16), temperature=body.get("temperature", 1.0),
        top_p=body.get("top_p", 1.0), top_k=max(top_k, 0), min_p=body.get("min_p", 0.0),
        repetition_penalty=body.get("repetition_penalty", 1.0),
        presence_penalty=body.get("presence_penalty", 0.0),
        frequency_penalty=body.get("frequency_penalty", 0.0),
        logit_bias={int(k): v for k, v in bias.items()} if bias else None,
        seed=None if seed is None else seed + seed_offset, ignore_eos=body.get("ignore_eos", False),
        stop_strings=body.get("stop"), logprobs=body.get("logprobs"), prompt_logprobs=echo_lp)


def post(url, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": MODEL_NAME, **body}, timeout=120, **kwargs)


def expected_choice(model, prompt, body, index, seed_offset=0) -> dict:
    """The whole choice object OpenAI's API would return, built from the library's completion.

    A prompt of token ids must be ``model.encode`` of some text (the library is given the text).
    """
    prompt_text = prompt if isinstance(prompt, str) else model.decode(prompt)
    prompt_ids = model.encode(prompt) if isinstance(prompt, str) else list(prompt)
    assert model.encode(prompt_text) == prompt_ids
    done = offline(model, prompt_text, body, seed_offset)
    echo = body.get("echo", False)
    logprobs = None
    if body.get("logprobs") is not None:
        start = len(prompt_text) if echo else 0
        logprobs = legacy_logprobs(model.encoder, done.token_ids, done.logprobs, start)
        if echo:
            head = legacy_logprobs(model.encoder, prompt_ids, done.prompt_logprobs)
            logprobs = {key: head[key] + logprobs[key] for key in head}
    return {"text": (prompt_text if echo else "") + done.text, "index": index, "logprobs": logprobs,
            "finish_reason": openai_finish(done.finish_reason)}, len(prompt_ids), len(done.token_ids)


SETTINGS = [
    {"seed": 7},  # OpenAI's defaults: 16 tokens at temperature 1
    {"temperature": 0, "max_tokens": 30},
    {"temperature": 0.8, "top_p": 0.9, "seed": 1, "max_tokens": 24},
    {"temperature": 0.7, "top_k": 20, "seed": 2},
    {"top_k": -1, "seed": 3},
    {"min_p": 0.1, "seed": 4, "temperature": 1.3},
    {"repetition_penalty": 1.3, "temperature": 0, "max_tokens": 30},
    {"presence_penalty": 1.5, "frequency_penalty": -0.5, "seed": 5, "max_tokens": 30},
    {"presence_penalty": -2, "frequency_penalty": 2, "temperature": 0, "max_tokens": 20},
    {"logit_bias": {"104": 5.0, "111": -100}, "seed": 6},
    {"logit_bias": {str(EOS): 100}},  # the end-of-text token at once: finish_reason "stop", no text
    {"logit_bias": {str(EOS): 100}, "ignore_eos": True, "max_tokens": 5},
    {"stop": "e", "temperature": 0, "max_tokens": 40},
    {"stop": ["zz", "q", "\n"], "seed": 8, "max_tokens": 40},
    {"max_tokens": 0},
    {"user": "someone", "best_of": 1, "n": 1, "seed": 9, "suffix": None, "stream": False},
    {"logprobs": 0, "seed": 1},
    {"logprobs": 5, "temperature": 0},
    {"logprobs": 20, "seed": 2, "top_k": 3, "max_tokens": 10},
    {"echo": True, "seed": 3},
    {"echo": True, "logprobs": 2, "seed": 4},
    {"echo": True, "logprobs": 1, "max_tokens": 0},  # scoring a text, as evaluation harnesses do
    {"temperature": 1.0, "seed": 11, "logit_bias": {"195": 40, "169": 40, "226": 30}},  # split UTF-8
]


@pytest.mark.parametrize("body", SETTINGS, ids=lambda b: json.dumps(b, sort_keys=True))
def test_every_field_matches_the_library(model, url, body):
    prompt = "The quick brown fox"
    response = post(url, {"prompt": prompt, **body})
    assert response.status_code == 200, response.text
    data = response.json()
    choice, n_prompt, n_generated = expected_choice(model, prompt, body, 0)
    assert data["choices"] == [choice]
    assert data["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": n_generated,
                             "total_tokens": n_prompt + n_generated}
    assert data["object"] == "text_completion" and data["model"] == MODEL_NAME
    assert data["id"].startswith("cmpl-") and isinstance(data["created"], int)


def test_a_stop_string_that_occurs_cuts_the_text(model, url):
    free = model.generate("Once upon", 40, temperature=0.0, ignore_eos=True).text
    stop = free[len(free) // 2: len(free) // 2 + 2]
    data = post(url, {"prompt": "Once upon", "max_tokens": 40, "temperature": 0, "ignore_eos": True,
                      "stop": [stop]}).json()
    assert data["choices"][0]["text"] == free[: free.index(stop)]
    assert data["choices"][0]["finish_reason"] == "stop"


def test_the_openai_client_gets_the_library_answer(model, client):
    result = client.completions.create(model=MODEL_NAME, prompt="Hello world", max_tokens=12,
                                       temperature=0.9, seed=21, logprobs=3)
    done = model.generate("Hello world", 12, temperature=0.9, seed=21, logprobs=3)
    assert result.choices[0].text == done.text
    assert result.choices[0].logprobs.token_logprobs == [lp.logprob for lp in done.logprobs]
    assert result.choices[0].logprobs.tokens == [token_string(model.encoder, t) for t in done.token_ids]
    assert result.usage.completion_tokens == len(done.token_ids)


@pytest.mark.parametrize("form", ["strings", "ids", "id lists"])
def test_prompt_forms_and_n(model, url, form):
    texts = ["Alan Turing", "The cat sat on"]
    ids = [model.encode(t) for t in texts]
    prompt = {"strings": texts, "ids": ids[0], "id lists": ids}[form]
    prompts = {"strings": texts, "ids": [ids[0]], "id lists": ids}[form]  # as the server sees them
    body = {"n": 3, "seed": 40, "max_tokens": 8, "temperature": 1.1, "logprobs": 1, "echo": True}
    data = post(url, {"prompt": prompt, **body}).json()
    expected, n_prompt, n_generated = [], 0, 0
    for p, text in enumerate(prompts):
        n_prompt += len(ids[p])
        for i in range(3):  # choice i of a prompt is sampled with seed + i
            choice, _, generated = expected_choice(model, text, body, p * 3 + i, seed_offset=i)
            expected.append(choice)
            n_generated += generated
    assert data["choices"] == expected
    assert data["usage"]["prompt_tokens"] == n_prompt  # each prompt counted once, whatever n
    assert data["usage"]["completion_tokens"] == n_generated


def test_echoed_prompt_logprobs_score_the_prompt(model, url):
    prompt = "Scoring this sentence"
    data = post(url, {"prompt": prompt, "echo": True, "logprobs": 0, "max_tokens": 0}).json()
    logprobs = data["choices"][0]["logprobs"]
    assert data["choices"][0]["text"] == prompt
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1:] == list(model.score(prompt).logprobs)
    assert "".join(logprobs["tokens"]) == prompt  # every token of this ASCII prompt is whole text
    assert [prompt[o:] for o in logprobs["text_offset"]] == [
        prompt[len("".join(logprobs["tokens"][:i])):] for i in range(len(logprobs["tokens"]))]


# --- streaming ---------------------------------------------------------------------------------

STREAMED = [
    {"seed": 1, "max_tokens": 30},
    {"temperature": 0, "max_tokens": 20, "logprobs": 2},
    {"n": 3, "seed": 5, "max_tokens": 12, "logprobs": 1, "stream_options": {"include_usage": True}},
    {"echo": True, "seed": 2, "max_tokens": 6, "stream_options": {"include_usage": True}},
    {"echo": True, "logprobs": 3, "seed": 2, "max_tokens": 6},
    {"stop": ["e", "a"], "seed": 3, "max_tokens": 40},
    {"logit_bias": {str(EOS): 100}, "stream_options": {"include_usage": True}},
    {"seed": 11, "max_tokens": 40, "logit_bias": {"195": 40, "169": 40, "226": 30}, "logprobs": 0},
]


def join_stream(chunks: list, n: int) -> tuple:
    """Per choice: the joined text, the concatenated logprobs and the finish reason."""
    texts, logprobs, reasons = [""] * n, [None] * n, [None] * n
    for chunk in chunks:
        for c in chunk["choices"]:
            i = c["index"]
            assert reasons[i] is None, "nothing follows a choice's finish_reason"
            texts[i] += c["text"]
            if c["logprobs"] is not None:
                if logprobs[i] is None:
                    logprobs[i] = {k: [] for k in c["logprobs"]}
                for k, v in c["logprobs"].items():
                    logprobs[i][k] += v
            reasons[i] = c["finish_reason"]
    return texts, logprobs, reasons


@pytest.mark.parametrize("body", STREAMED, ids=lambda b: json.dumps(b, sort_keys=True))
def test_streamed_equals_not_streamed(url, body):
    prompt = "In the beginning"
    whole = post(url, {"prompt": prompt, **{k: v for k, v in body.items() if k != "stream_options"}}).json()
    with httpx.stream("POST", f"{url}/v1/completions", timeout=120,
                      json={"model": MODEL_NAME, "prompt": prompt, "stream": True, **body}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode("utf-8")
    chunks = [json.loads(p) for p in sse_events(raw)]
    include_usage = body.get("stream_options", {}).get("include_usage", False)
    if include_usage:  # OpenAI: usage null on every chunk, then one with no choices
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"] == whole["usage"]
        assert all(c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    assert all(c["object"] == "text_completion" and c["model"] == MODEL_NAME for c in chunks)
    n = body.get("n", 1)
    texts, logprobs, reasons = join_stream(chunks, n)
    assert texts == [c["text"] for c in whole["choices"]]
    assert logprobs == [c["logprobs"] for c in whole["choices"]]
    assert reasons == [c["finish_reason"] for c in whole["choices"]]


def test_the_openai_client_streams(model, client):
    stream = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=20, seed=3,
                                       stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        pieces += [c.text for c in chunk.choices]
        usage = chunk.usage or usage
    done = model.generate("Hello", 20, temperature=1.0, seed=3)
    assert "".join(pieces) == done.text
    assert usage.completion_tokens == len(done.token_ids)


def test_logprobs_are_always_finite_json(url):
    # A tiny temperature sends every alternative's log-probability towards -inf.
    response = post(url, {"prompt": "Hello", "temperature": 1e-30, "logprobs": 20, "max_tokens": 4,
                          "echo": True})
    assert response.status_code == 200

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")

    data = json.loads(response.text, parse_constant=refuse)
    for top in data["choices"][0]["logprobs"]["top_logprobs"][1:]:
        assert all(isinstance(v, float) and math.isfinite(v) for v in top.values())


def test_minus_infinity_is_sent_as_a_finite_number():
    from gpt2gen.server.logprobs import TextOffsets, TokenText, chat, legacy

    class Model:
        class encoder:
            token_bytes = staticmethod(lambda t: b"ab"[t:t + 1])

    text = TokenText(Model())
    entry = gpt2gen.TokenLogprob(0, "a", float("-inf"), [(1, "b", float("-inf"))])
    shaped = legacy(text, TextOffsets(text), [0], [entry])
    assert shaped["token_logprobs"] == [-9999.0] and shaped["top_logprobs"] == [{"b": -9999.0, "a": -9999.0}]
    assert chat(text, [entry])[0]["top_logprobs"][0]["logprob"] == -9999.0
