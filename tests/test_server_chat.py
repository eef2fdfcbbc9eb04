"""/v1/chat/completions, /v1/models, /health, /metrics, /tokenize and /detokenize through HTTP.

Chat needs a template (GPT-2 has none): without one it is a 400 saying so; with one, the reply
is ``GPT2.generate`` of the documented prompt with the template's stop strings.
"""

from __future__ import annotations

import json

import httpx
import pytest

import gpt2gen
from gpt2gen.server import ServerConfig, create_app
from serving import (
    MODEL_NAME,
    make_model_dir,
    metric,
    openai_finish,
    running,
    sse_events,
    token_string,
    wait_healthy,
)

pytestmark = pytest.mark.service  # a real server on 127.0.0.1

openai = pytest.importorskip("openai")

# The documented templates, restated (README and gpt2gen/server/chat_templates.py).
PLAIN_STOP = ["\nUser:", "\nSystem:"]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Tell me a story"}]
PLAIN_PROMPT = "System: You are terse.\nUser: Hi there!\nAssistant: Hello.\nUser: Tell me a story\nAssistant:"
CHATML_PROMPT = ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n"
                 "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nTell me a story<|im_end|>\n"
                 "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gpt2gen.GPT2.from_pretrained(make_model_dir(tmp_path_factory.mktemp("chat"), n_positions=256))


@pytest.fixture(scope="module")
def servers(model):
    """Three servers on one model: plain template, chatml template, no template."""
    urls = {}
    with running(create_app(model, ServerConfig(served_model_name=MODEL_NAME, chat_template="plain"))) as urls["plain"], \
         running(create_app(model, ServerConfig(served_model_name=MODEL_NAME, chat_template="chatml"))) as urls["chatml"], \
         running(create_app(model, ServerConfig(served_model_name=MODEL_NAME))) as urls[None]:
        for url in urls.values():
            wait_healthy(url)
        yield urls


def chat(url, body) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL_NAME, **body}, timeout=120)


def reference_message(model, prompt, body, stops, seed_offset=0):
    k = body.get("top_logprobs", 0) if body.get("logprobs") else None
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", model.n_ctx - len(model.encode(prompt))))
    user_stop = body.get("stop") or []
    user_stop = [user_stop] if isinstance(user_stop, str) else user_stop
    seed = body.get("seed")
    return model.generate(prompt, max_tokens, temperature=body.get("temperature", 1.0),
                          top_p=body.get("top_p", 1.0), seed=None if seed is None else seed + seed_offset,
                          presence_penalty=body.get("presence_penalty", 0.0),
                          stop_strings=stops + user_stop, logprobs=k)


def chat_logprobs(model, done):
    def one(token, logprob):
        return {"token": token_string(model.encoder, token), "logprob": logprob,
                "bytes": list(model.encoder.token_bytes(token))}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(a, lp) for a, _, lp in e.top]}
                        for e in done.logprobs]}


CHATS = [
    {"seed": 1, "max_tokens": 20},
    {"seed": 2, "max_completion_tokens": 30, "temperature": 0.7, "top_p": 0.9},
    {"seed": 3, "n": 2, "max_completion_tokens": 10, "logprobs": True, "top_logprobs": 3},
    {"temperature": 0, "max_completion_tokens": 25, "logprobs": True},
    {"seed": 4, "stop": "e", "presence_penalty": 1.0, "max_completion_tokens": 40},
    {"seed": 5},  # no limit: up to the context, or the template's stop string
]


@pytest.mark.parametrize("template,prompt,stops", [("plain", PLAIN_PROMPT, PLAIN_STOP),
                                                   ("chatml", CHATML_PROMPT, ["<|im_end|>"])])
@pytest.mark.parametrize("body", CHATS, ids=lambda b: json.dumps(b, sort_keys=True))
def test_chat_matches_the_library(model, servers, template, prompt, stops, body):
    response = chat(servers[template], {"messages": MESSAGES, **body})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    generated = 0
    for i, choice in enumerate(data["choices"]):
        done = reference_message(model, prompt, body, stops, seed_offset=i)
        assert choice == {"index": i, "message": {"role": "assistant", "content": done.text},
                          "logprobs": chat_logprobs(model, done) if body.get("logprobs") else None,
                          "finish_reason": openai_finish(done.finish_reason)}
        generated += len(done.token_ids)
    assert len(data["choices"]) == body.get("n", 1)
    assert data["usage"] == {"prompt_tokens": len(model.encode(prompt)), "completion_tokens": generated,
                             "total_tokens": len(model.encode(prompt)) + generated}


@pytest.mark.parametrize("body", CHATS[:4], ids=lambda b: json.dumps(b, sort_keys=True))
def test_streamed_chat_equals_not_streamed(servers, body):
    url = servers["plain"]
    whole = chat(url, {"messages": MESSAGES, **body}).json()
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120,
                      json={"model": MODEL_NAME, "messages": MESSAGES, "stream": True,
                            "stream_options": {"include_usage": True}, **body}) as response:
        assert response.status_code == 200
        chunks = [json.loads(p) for p in sse_events(response.read().decode("utf-8"))]
    *chunks, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    n = body.get("n", 1)
    content, logprobs, reasons, roles = [""] * n, [[] for _ in range(n)], [None] * n, [[] for _ in range(n)]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] is None
        (c,) = chunk["choices"]
        i = c["index"]
        assert reasons[i] is None
        if "role" in c["delta"]:
            roles[i].append(c["delta"]["role"])
            assert content[i] == ""  # the role opens the choice
        content[i] += c["delta"].get("content", "")
        if c["logprobs"]:
            logprobs[i] += c["logprobs"]["content"]
        reasons[i] = c["finish_reason"]
    assert roles == [["assistant"]] * n
    assert content == [c["message"]["content"] for c in whole["choices"]]
    assert reasons == [c["finish_reason"] for c in whole["choices"]]
    assert [lp or None for lp in logprobs] == [c["logprobs"] and c["logprobs"]["content"] for c in whole["choices"]]


def test_the_openai_client_chats(model, servers):
    client = openai.OpenAI(base_url=f"{servers['plain']}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=15, seed=9)
    done = reference_message(model, PLAIN_PROMPT, {"seed": 9, "max_completion_tokens": 15}, PLAIN_STOP)
    assert reply.choices[0].message.content == done.text
    stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=15,
                                            seed=9, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == done.text


def test_content_parts_are_joined(model, servers):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a story"}]}]
    data = chat(servers["plain"], {"messages": parts, "seed": 1, "max_tokens": 10}).json()
    done = reference_message(model, "User: Tell me a story\nAssistant:", {"seed": 1, "max_tokens": 10}, PLAIN_STOP)
    assert data["choices"][0]["message"]["content"] == done.text


def test_developer_is_system(servers):
    developer = [{"role": "developer", "content": "You are terse."}, *MESSAGES[1:]]
    a = chat(servers["plain"], {"messages": developer, "seed": 1, "max_tokens": 10}).json()
    b = chat(servers["plain"], {"messages": MESSAGES, "seed": 1, "max_tokens": 10}).json()
    assert a["choices"] == b["choices"]


def test_without_a_template_chat_is_a_clear_400(servers):
    response = chat(servers[None], {"messages": MESSAGES})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "chat_template_missing" and "--chat-template" in error["message"]
    client = openai.OpenAI(base_url=f"{servers[None]}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="chat template"):
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES)


# --- the other routes --------------------------------------------------------------------------


def test_models(model, servers):
    client = openai.OpenAI(base_url=f"{servers[None]}/v1", api_key="unused", max_retries=0)
    (card,) = client.models.list().data
    assert card.id == MODEL_NAME and card.object == "model" and card.owned_by == "gpt2gen"
    assert card.model_extra["max_model_len"] == model.n_ctx
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_health(servers):
    response = httpx.get(f"{servers[None]}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_tokenize_and_detokenize(model, servers):
    url = servers["plain"]
    text = "Hello world, héllo 🙂"
    data = httpx.post(f"{url}/tokenize", json={"model": MODEL_NAME, "prompt": text, "return_token_strs": True}).json()
    ids = model.encode(text)
    assert data == {"count": len(ids), "max_model_len": model.n_ctx, "tokens": ids,
                    "token_strs": [token_string(model.encoder, t) for t in ids]}
    assert httpx.post(f"{url}/tokenize", json={"prompt": text}).json()["token_strs"] is None
    assert httpx.post(f"{url}/detokenize", json={"tokens": ids}).json() == {"prompt": text}
    chat_ids = httpx.post(f"{url}/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    assert chat_ids == model.encode(PLAIN_PROMPT)
    without = httpx.post(f"{url}/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}).json()
    assert without["tokens"] == model.encode(PLAIN_PROMPT[: -len("Assistant:")])


def test_metrics_count_what_ran(model, servers):
    url = servers[None]
    names = ["gpt2gen_requests_running", "gpt2gen_requests_waiting", "gpt2gen_prompt_tokens_total",
             "gpt2gen_generation_tokens_total", "gpt2gen_time_to_first_token_seconds_count",
             "gpt2gen_request_latency_seconds_count"]
    before = {name: metric(url, name) for name in names}
    finished = {r: metric(url, "gpt2gen_requests_finished_total", finish_reason=r) for r in ("length", "eos")}
    body = {"model": MODEL_NAME, "prompt": ["one two", "three"], "n": 2, "max_tokens": 5, "ignore_eos": True}
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=120).status_code == 200
    eos = {"model": MODEL_NAME, "prompt": "x", "logit_bias": {"399": 100}, "max_tokens": 5}
    assert httpx.post(f"{url}/v1/completions", json=eos, timeout=120).status_code == 200
    after = {name: metric(url, name) for name in names}
    prompt_tokens = len(model.encode("one two")) + len(model.encode("three")) + len(model.encode("x"))
    assert after["gpt2gen_prompt_tokens_total"] - before["gpt2gen_prompt_tokens_total"] == prompt_tokens
    assert after["gpt2gen_generation_tokens_total"] - before["gpt2gen_generation_tokens_total"] == 4 * 5 + 1
    assert metric(url, "gpt2gen_requests_finished_total", finish_reason="length") - finished["length"] == 4
    assert metric(url, "gpt2gen_requests_finished_total", finish_reason="eos") - finished["eos"] == 1
    for name in ("gpt2gen_time_to_first_token_seconds_count", "gpt2gen_request_latency_seconds_count"):
        assert after[name] - before[name] == 2  # per HTTP request
    assert after["gpt2gen_requests_running"] == 0 and after["gpt2gen_requests_waiting"] == 0
    text = httpx.get(f"{url}/metrics").text
    assert 'gpt2gen_requests_finished_total{finish_reason="cancelled"}' in text
    assert "gpt2gen_inter_token_latency_seconds_bucket" in text
    assert 'gpt2gen_http_responses_total{status="200"}' in text
