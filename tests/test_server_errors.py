"""Every error path, in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``:
400 naming the field, 401, 404, 405, 413, 429 with Retry-After, 503 while loading; never a 500,
and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

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

LIMIT = 64 * 1024  # the test servers' body limit


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gpt2gen.GPT2.from_pretrained(make_model_dir(tmp_path_factory.mktemp("errors")))


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return gpt2gen.GPT2.from_pretrained(make_slow_model_dir(tmp_path_factory.mktemp("slow")))


@pytest.fixture(scope="module")
def url(model):
    config = ServerConfig(served_model_name=MODEL_NAME, chat_template="plain", max_body_bytes=LIMIT)
    with running(create_app(model, config)) as url:
        wait_healthy(url)
        yield url


def assert_error(response, status, param=None, code=None, message=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    if message is not None:
        assert message in error["message"], error
    return error


def completion(**fields):
    return {"model": MODEL_NAME, "prompt": "hello", "max_tokens": 3, **fields}


def messages(**fields):
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **fields}


BAD_COMPLETIONS = [  # (body, param named in the 400)
    (completion(temperature=-0.1), "temperature"),
    (completion(temperature=2.5), "temperature"),
    (completion(temperature="1"), "temperature"),
    (completion(temperature=True), "temperature"),
    (completion(top_p=0), "top_p"),
    (completion(top_p=1.5), "top_p"),
    (completion(n=0), "n"),
    (completion(n=129), "n"),
    (completion(n=1.0), "n"),
    (completion(max_tokens=-1), "max_tokens"),
    (completion(max_tokens="16"), "max_tokens"),
    (completion(logprobs=21), "logprobs"),
    (completion(logprobs=-1), "logprobs"),
    (completion(logprobs=True), "logprobs"),
    (completion(presence_penalty=2.5), "presence_penalty"),
    (completion(frequency_penalty=-3), "frequency_penalty"),
    (completion(logit_bias={"abc": 1}), "logit_bias"),
    (completion(logit_bias={"400": 1}), "logit_bias"),
    (completion(logit_bias={"-1": 1}), "logit_bias"),
    (completion(logit_bias={"5": 101}), "logit_bias"),
    (completion(logit_bias=[1, 2]), "logit_bias"),
    (completion(best_of=2), "best_of"),
    (completion(best_of=3, n=2), "best_of"),
    (completion(suffix="world"), "suffix"),
    (completion(prompt=[]), "prompt"),
    (completion(prompt=[[]]), "prompt"),
    (completion(prompt=[1.5]), "prompt"),
    (completion(prompt=[1, "a"]), "prompt"),
    (completion(prompt=[True]), "prompt"),
    (completion(prompt=[-1]), "prompt"),
    (completion(prompt=[400]), "prompt"),
    (completion(prompt=[[1], [2**40]]), "prompt"),
    (completion(prompt=""), "prompt"),
    (completion(prompt={"text": "hi"}), "prompt"),
    (completion(prompt=None), "prompt"),
    (completion(prompt="\ud800"), "prompt"),
    (completion(stop=[1]), "stop"),
    (completion(stop=["a"] * 17), "stop"),
    (completion(seed=-1), "seed"),
    (completion(seed=2**64), "seed"),
    (completion(seed=2**64 - 1, n=2), "seed"),
    (completion(stream="yes"), "stream"),
    (completion(stream_options={"include_usage": True}), "stream_options"),
    (completion(stream=True, stream_options={"include_usage": True, "other": 1}), "stream_options.other"),
    (completion(echo=1), "echo"),
    (completion(top_k=-2), "top_k"),
    (completion(min_p=1.5), "min_p"),
    (completion(repetition_penalty=0), "repetition_penalty"),
    (completion(ignore_eos="true"), "ignore_eos"),
    (completion(user=5), "user"),
    (completion(functions=[]), "functions"),
    ({"model": MODEL_NAME}, "prompt"),
    (completion(max_tokens=200), "max_tokens"),  # prompt + max_tokens over the 128-token context
    (completion(prompt="x " * 200, max_tokens=1), "prompt"),
    (completion(n=100, prompt=["a", "b", "c"]), "n"),  # more sequences than the queue holds
]


@pytest.mark.parametrize("body,param", BAD_COMPLETIONS, ids=lambda v: repr(v)[:60])
def test_invalid_completion_fields(url, body, param):
    # json.dumps escapes a lone surrogate as "\\ud800", as a JavaScript client would send it
    error = assert_error(httpx.post(f"{url}/v1/completions", content=json.dumps(body)), 400, param)
    assert error["type"] == "invalid_request_error"


BAD_CHATS = [
    (messages(messages=[]), "messages"),
    (messages(messages="hi"), "messages"),
    (messages(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (messages(messages=[{"role": "user"}]), "messages.0.content"),
    (messages(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages.0.content"),
    (messages(messages=[{"role": "user", "content": "hi", "tool_calls": []}]), "messages.0.tool_calls"),
    (messages(top_logprobs=2), "top_logprobs"),
    (messages(logprobs=True, top_logprobs=21), "top_logprobs"),
    (messages(logprobs=3), "logprobs"),
    (messages(max_completion_tokens=-1), "max_completion_tokens"),
    (messages(max_completion_tokens=500), "max_completion_tokens"),
    (messages(max_tokens=500), "max_tokens"),
    (messages(tools=[]), "tools"),
    (messages(response_format={"type": "json_object"}), "response_format"),
    (messages(temperature=9), "temperature"),
    ({"model": MODEL_NAME}, "messages"),
]


@pytest.mark.parametrize("body,param", BAD_CHATS, ids=lambda v: repr(v)[:60])
def test_invalid_chat_fields(url, body, param):
    assert_error(httpx.post(f"{url}/v1/chat/completions", json=body), 400, param)


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
    ("/tokenize", {"prompt": 5}, "prompt"),
    ("/detokenize", {"tokens": [1, 400]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/detokenize", {}, "tokens"),
])
def test_invalid_tokenizer_requests(url, path, body, param):
    assert_error(httpx.post(f"{url}{path}", json=body), 400, param)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[1, 2]", b"null", b'"text"', b'{"prompt": NaN}',
                                 b'{"prompt": "a", "temperature": Infinity}', b'{"prompt": "a", "temperature": 1e999}',
                                 b"\xff\xfe{}", b"[" * 30_000 + b"]" * 30_000])
def test_bodies_that_are_not_a_json_object(url, raw):
    response = httpx.post(f"{url}/v1/completions", content=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, param="temperature" if b"1e999" in raw else None)


def test_the_content_type_does_not_matter(model, url):
    response = httpx.post(f"{url}/v1/completions", content=b'{"prompt": "hello", "max_tokens": 2, "temperature": 0}',
                          headers={"Content-Type": "text/plain"})
    assert response.json()["choices"][0]["text"] == model.generate("hello", 2).text


def test_unknown_model_is_404(url):
    for path, body in (("/v1/completions", completion(model="gpt-4")), ("/v1/chat/completions", messages(model="gpt-4")),
                       ("/tokenize", {"model": "gpt-4", "prompt": "x"})):
        assert_error(httpx.post(f"{url}{path}", json=body), 404, "model", "model_not_found")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi")


def test_unknown_route_and_method(url):
    assert_error(httpx.post(f"{url}/v1/embeddings", json={}), 404, code="unknown_url")
    assert_error(httpx.get(f"{url}/nothing/here"), 404)
    assert_error(httpx.get(f"{url}/v1/completions"), 405)
    assert_error(httpx.post(f"{url}/health"), 405)


def test_oversized_bodies_are_413(url):
    big = b'{"prompt": "' + b"a" * LIMIT + b'"}'
    assert_error(httpx.post(f"{url}/v1/completions", content=big), 413, code="request_too_large")

    def chunks():  # no Content-Length: the limit applies as the body arrives
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    assert_error(httpx.post(f"{url}/v1/completions", content=chunks()), 413, code="request_too_large")
    assert httpx.get(f"{url}/health").status_code == 200


def test_the_openai_client_sees_its_own_exceptions(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL_NAME, prompt="hi", temperature=5)
    assert raised.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=1000)


def test_no_error_was_a_500(url):
    """Run last in this module (file order): everything above left no 500 behind."""
    assert metric(url, "gpt2gen_http_responses_total", status="500") == 0
    assert httpx.get(f"{url}/health").status_code == 200


# --- API keys ---------------------------------------------------------------------------------


def test_api_keys(model):
    config = ServerConfig(served_model_name=MODEL_NAME, api_keys=("key-one", "key-two"))
    with running(create_app(model, config)) as url:
        wait_healthy(url)
        body = completion(max_tokens=1)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"},
                        {"Authorization": "Basic key-one"}, {"Authorization": "Bearer key-one2"},
                        {"Authorization": "Bearer"}, {"Authorization": "bearer KEY-ONE"}):
            for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models"), ("POST", "/tokenize"),
                                 ("POST", "/v1/chat/completions"), ("GET", f"/v1/models/{MODEL_NAME}")):
                response = httpx.request(method, f"{url}{path}", json=body, headers=headers)
                assert_error(response, 401, code="invalid_api_key")
                assert response.headers["www-authenticate"] == "Bearer"
        for key in ("key-one", "key-two"):
            assert httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # open, for load balancers
        assert httpx.get(f"{url}/metrics").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=f"{url}/v1", api_key="key-two", max_retries=0).models.list().data


# --- a full queue: 429 with Retry-After ---------------------------------------------------------


def test_a_full_queue_is_429_with_retry_after(slow_model):
    """max_batch 1 and max_queue 1: one long request runs, one waits, the third is refused."""
    config = ServerConfig(served_model_name=MODEL_NAME, max_batch=1, max_queue=1, retry_after_seconds=2)
    long_request = completion(max_tokens=SLOW_MAX_TOKENS, ignore_eos=True, stream=True)
    with running(create_app(slow_model, config)) as url:
        wait_healthy(url)

        async def scenario():
            async with httpx.AsyncClient(timeout=120) as http:
                async with http.stream("POST", f"{url}/v1/completions", json=long_request) as running_one:
                    chunks = running_one.aiter_raw()  # (kept: a dropped iterator closes the response)
                    await chunks.__anext__()  # generating: it holds the batch's one slot
                    async with http.stream("POST", f"{url}/v1/completions", json=long_request) as waiting:
                        assert waiting.status_code == 200  # accepted: it waits in the queue
                        refused = await http.post(f"{url}/v1/completions", json=completion())
                        assert_error(refused, 429, code="queue_full")
                        assert refused.headers["retry-after"] == "2"
                        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
                        with pytest.raises(openai.RateLimitError):
                            await client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1)
                        # more sequences than the queue can ever hold: refused as a whole, and says so
                        assert_error(await http.post(f"{url}/v1/completions", json=completion(n=2)), 400, "n")

        asyncio.run(scenario())
        # both streams were cut short by the client: both are cancelled, the server is idle again
        assert wait_metric(url, "gpt2gen_requests_running", lambda v: v == 0) == 0
        assert wait_metric(url, "gpt2gen_requests_waiting", lambda v: v == 0) == 0
        assert httpx.post(f"{url}/v1/completions", json=completion(max_tokens=1), timeout=120).status_code == 200
        assert metric(url, "gpt2gen_http_responses_total", status="429") >= 2


# --- 503 while loading ---------------------------------------------------------------------------


def test_503_while_loading_then_200(model):
    release = threading.Event()

    def loader():
        assert release.wait(60)
        return model

    with running(create_app(loader, ServerConfig(served_model_name=MODEL_NAME))) as url:
        health = httpx.get(f"{url}/health")
        assert_error(health, 503, code="model_loading")
        assert health.headers["retry-after"] == "1"
        assert_error(httpx.post(f"{url}/v1/completions", json=completion()), 503, code="model_loading")
        assert_error(httpx.get(f"{url}/v1/models"), 503, code="model_loading")
        assert httpx.get(f"{url}/metrics").status_code == 200
        release.set()
        wait_healthy(url)
        assert httpx.post(f"{url}/v1/completions", json=completion()).status_code == 200


def test_a_failed_load_is_503_with_the_reason():
    heard = []

    def loader():
        raise gpt2gen.CheckpointError("no such checkpoint: /nowhere")

    app = create_app(loader, ServerConfig(), on_load_error=heard.append)
    with running(app) as url:
        for _ in range(600):
            if heard:
                break
            time.sleep(0.05)
        assert_error(httpx.get(f"{url}/health"), 503, code="model_load_failed", message="/nowhere")
    assert isinstance(heard[0], gpt2gen.CheckpointError)


def test_a_half_sent_body_does_not_hurt(url):
    """A client that declares a body and hangs up halfway: the server stays well."""
    host, port = url.removeprefix("http://").split(":")
    for _ in range(5):
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"prompt\": \"abc")
    assert httpx.get(f"{url}/health").status_code == 200


# --- the engine ending a request early ---------------------------------------------------------


class EndingEngine:
    """An engine whose every request ends at once with ``finish_reason`` (what the scheduler does
    when an allocation fails, or when it shuts down under a connected client)."""

    max_batch, max_queue, running, waiting = 4, 8, 0, 0

    def __init__(self, model, finish_reason):
        self.model, self.finish_reason = model, finish_reason

    def submit(self, prompt, max_new_tokens=16, **options):
        return EndedRequest(gpt2gen.Completion("", [], self.finish_reason, prompt_token_ids=list(prompt)))

    async def aclose(self):
        pass


class EndedRequest:
    def __init__(self, completion):
        self.completion = completion

    def __aiter__(self):
        return self

    async def __anext__(self):
        raise StopAsyncIteration

    async def result(self):
        return self.completion

    def cancel(self):
        pass


@pytest.mark.parametrize("reason,code", [("out_of_memory", "out_of_memory"), ("cancelled", "cancelled")])
def test_a_request_the_engine_ends_early_is_a_503(model, reason, code):
    with running(create_app(EndingEngine(model, reason), ServerConfig(served_model_name=MODEL_NAME,
                                                                      chat_template="plain"))) as url:
        wait_healthy(url)
        assert_error(httpx.post(f"{url}/v1/completions", json=completion()), 503, code=code)
        assert_error(httpx.post(f"{url}/v1/chat/completions", json=messages()), 503, code=code)
        with httpx.stream("POST", f"{url}/v1/completions", json=completion(stream=True)) as response:
            events = [line for line in response.iter_lines() if line]
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == code
        assert events[-1] == "data: [DONE]"
        assert metric(url, "gpt2gen_requests_finished_total", finish_reason=reason) == 3
