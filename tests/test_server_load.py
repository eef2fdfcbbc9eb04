"""The server under load: many concurrent requests with different settings, each exactly its
offline twin; clients that disconnect cancel their generation (the slot frees, the cancelled
counter rises) whether they stream or not."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

import gpt2gen
from gpt2gen.server import ServerConfig, create_app
from serving import (
    MODEL_NAME,
    SLOW_MAX_TOKENS,
    make_model_dir,
    make_slow_model_dir,
    metric,
    running,
    wait_healthy,
    wait_metric,
)

pytestmark = pytest.mark.service  # a real server on 127.0.0.1

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gpt2gen.GPT2.from_pretrained(make_model_dir(tmp_path_factory.mktemp("load"), n_positions=256))


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return gpt2gen.GPT2.from_pretrained(make_slow_model_dir(tmp_path_factory.mktemp("slow")))


def random_request(rng: random.Random, k: int) -> dict:
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "é", "🙂", "42", "\n"]
    body = {"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(1, 30))),
            "max_tokens": rng.choice([1, 2, 7, 16, 33, 60]), "seed": 1000 + k, "n": rng.choice([1, 1, 2])}
    body["temperature"] = rng.choice([0.0, 0.6, 1.0, 1.4])
    for field, values in (("top_k", [5, 40]), ("top_p", [0.5, 0.9]), ("min_p", [0.05, 0.2]),
                          ("repetition_penalty", [0.8, 1.3]), ("presence_penalty", [-1.0, 1.5]),
                          ("frequency_penalty", [0.5, -0.5]), ("stop", [["e"], ["th", "\n"]]),
                          ("logprobs", [0, 3]), ("ignore_eos", [True]), ("echo", [True]),
                          ("logit_bias", [{"101": 3.0, "399": -5.0}])):
        if rng.random() < 0.3:
            body[field] = rng.choice(values)
    body["stream"] = rng.random() < 0.5
    return body


def offline(model, body: dict, i: int):
    """The library's completion for choice i of an OpenAI request body."""
    bias = body.get("logit_bias")
    return model.generate(
        body["prompt"], body["max_tokens"], temperature=body["temperature"], top_k=body.get("top_k", 0),
        top_p=body.get("top_p", 1.0), min_p=body.get("min_p", 0.0),
        repetition_penalty=body.get("repetition_penalty", 1.0), presence_penalty=body.get("presence_penalty", 0.0),
        frequency_penalty=body.get("frequency_penalty", 0.0),
        logit_bias={int(t): v for t, v in bias.items()} if bias else None, seed=body["seed"] + i,
        ignore_eos=body.get("ignore_eos", False), stop_strings=body.get("stop"), logprobs=body.get("logprobs"))


EXTENSIONS = ("top_k", "min_p", "repetition_penalty", "ignore_eos")  # not in the openai client's signature


def client_fields(body: dict) -> dict:
    fields = {k: v for k, v in body.items() if k not in EXTENSIONS and k != "stream"}
    return {**fields, "extra_body": {k: body[k] for k in EXTENSIONS if k in body}}


async def answer(client, body: dict):
    """(texts, token logprobs, finish reasons) per choice, streamed or not."""
    fields = client_fields(body)
    n = body["n"]
    if not body["stream"]:
        result = await client.completions.create(model=MODEL_NAME, **fields)
        return ([c.text for c in result.choices],
                [c.logprobs.token_logprobs if c.logprobs else None for c in result.choices],
                [c.finish_reason for c in result.choices])
    texts, logprobs, reasons = [""] * n, [None] * n, [None] * n
    async for chunk in await client.completions.create(model=MODEL_NAME, stream=True, **fields):
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.logprobs:
                logprobs[c.index] = (logprobs[c.index] or []) + c.logprobs.token_logprobs
            reasons[c.index] = c.finish_reason or reasons[c.index]
    return texts, logprobs, reasons


def test_many_concurrent_requests_each_equal_their_offline_twin(model):
    """48 requests at once, a third more sequences than the batch holds, every setting mixed."""
    rng = random.Random(2024)
    bodies = [random_request(rng, k) for k in range(48)]
    config = ServerConfig(served_model_name=MODEL_NAME, max_batch=6, max_queue=512)
    with running(create_app(model, config)) as url:
        wait_healthy(url)

        async def all_at_once():
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
            return await asyncio.gather(*(answer(client, body) for body in bodies))

        answers = asyncio.run(all_at_once())
        for body, (texts, logprobs, reasons) in zip(bodies, answers):
            for i in range(body["n"]):
                done = offline(model, body, i)
                echo = body["prompt"] if body.get("echo") else ""
                assert texts[i] == echo + done.text, body
                assert reasons[i] == {"eos": "stop", "stop": "stop", "length": "length"}[done.finish_reason], body
                if body.get("logprobs") is not None:
                    generated = logprobs[i][-len(done.logprobs):] if done.logprobs else []
                    assert generated == [lp.logprob for lp in done.logprobs], body
        assert metric(url, "gpt2gen_requests_running") == 0
        assert all(metric(url, "gpt2gen_http_responses_total", status=s) == 0 for s in ("400", "429", "500"))


# --- disconnects ---------------------------------------------------------------------------------


@pytest.fixture
def slow_url(slow_model):
    """One sequence at a time, so a cancelled request's freed slot is visible to the next."""
    config = ServerConfig(served_model_name=MODEL_NAME, max_batch=1, max_queue=4)
    with running(create_app(slow_model, config)) as url:
        wait_healthy(url)
        yield url


LONG = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": SLOW_MAX_TOKENS, "ignore_eos": True}


def counters(url) -> tuple:
    return (metric(url, "gpt2gen_requests_finished_total", finish_reason="cancelled"),
            metric(url, "gpt2gen_generation_tokens_total"))


def assert_cancelled_early(url, before) -> None:
    """The cancelled counter rose by one, the slot is free, and the generation stopped far short
    of its SLOW_MAX_TOKENS (seconds of work) - it was cancelled, not finished."""
    cancelled = wait_metric(url, "gpt2gen_requests_finished_total", lambda v: v >= before[0] + 1,
                            finish_reason="cancelled")
    assert cancelled == before[0] + 1
    assert wait_metric(url, "gpt2gen_requests_running", lambda v: v == 0) == 0
    generated = metric(url, "gpt2gen_generation_tokens_total") - before[1]
    assert 0 < generated < SLOW_MAX_TOKENS / 2
    # the freed slot serves the next request
    quick = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 2}, timeout=120)
    assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] == 2


def test_a_streaming_client_that_disconnects_cancels(slow_url):
    before = counters(slow_url)
    with httpx.stream("POST", f"{slow_url}/v1/completions", json={**LONG, "stream": True}, timeout=120) as stream:
        next(stream.iter_raw())  # a token arrived: the generation runs; then hang up
    assert_cancelled_early(slow_url, before)


def test_a_waiting_client_that_disconnects_cancels(slow_url):
    before = counters(slow_url)
    with pytest.raises(httpx.ReadTimeout):  # gives up long before the answer could come
        httpx.post(f"{slow_url}/v1/completions", json=LONG, timeout=httpx.Timeout(120, read=0.5))
    assert_cancelled_early(slow_url, before)


def test_the_openai_client_closing_a_stream_cancels(slow_url):
    before = counters(slow_url)
    client = openai.OpenAI(base_url=f"{slow_url}/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(stream=True, **client_fields(LONG))
    next(iter(stream))
    stream.close()
    assert_cancelled_early(slow_url, before)


def test_a_queued_request_whose_client_leaves_is_cancelled_too(slow_url):
    """One request runs; a second waits for the slot, its client leaves; then the first's does."""
    before = counters(slow_url)
    with httpx.stream("POST", f"{slow_url}/v1/completions", json={**LONG, "stream": True}, timeout=120) as first:
        chunks = first.iter_raw()  # (kept: a dropped iterator closes the response)
        next(chunks)
        with httpx.stream("POST", f"{slow_url}/v1/completions", json={**LONG, "stream": True}, timeout=120):
            assert wait_metric(slow_url, "gpt2gen_requests_waiting", lambda v: v == 1) == 1
        assert wait_metric(slow_url, "gpt2gen_requests_waiting", lambda v: v == 0) == 0
        assert wait_metric(slow_url, "gpt2gen_requests_finished_total", lambda v: v == before[0] + 1,
                           finish_reason="cancelled") == before[0] + 1
        assert metric(slow_url, "gpt2gen_requests_running") == 1  # the first still runs
    assert wait_metric(slow_url, "gpt2gen_requests_finished_total", lambda v: v == before[0] + 2,
                       finish_reason="cancelled") == before[0] + 2
    assert wait_metric(slow_url, "gpt2gen_requests_running", lambda v: v == 0) == 0
