"""gpt2gen.ray_serve on a local Ray cluster (2 CPUs): the OpenAI server as a Ray Serve
application. Two replicas answer concurrent requests from the ``openai`` client exactly as
``GPT2.generate`` does in this process; errors keep OpenAI's shape through Ray's proxy; Ray's
``serve run`` command passes its ``key=value`` arguments to ``build_openai_app``; a client that
hangs up cancels its generation on the replica.

One cluster for the module, Serve's HTTP proxy on 127.0.0.1 and a free port. The cluster has 2
CPUs and every replica reserves one: the tests that deploy an application of their own run before
the two-replica application is deployed (pytest runs them in file order) and delete theirs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import gpt2gen
from serving import (
    MODEL_NAME,
    SLOW_MAX_TOKENS,
    WAIT_SECONDS,
    legacy_logprobs,
    make_model_dir,
    make_slow_model_dir,
    metric,
    openai_finish,
    wait_metric,
)

pytestmark = pytest.mark.service  # a local Ray cluster, Serve's proxy on 127.0.0.1

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
from gpt2gen.ray_serve import AppConfig, build_openai_app  # noqa: E402

KEY = "ray-serve-test-key"
DEPLOY_SECONDS = 300  # a replica starts in seconds, but the machine is shared


# --- the configuration, without a cluster -------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        ({}, "model_source is required"),
        ({"model_source": ""}, "model_source"),
        ({"model_source": "m", "num_replica": 2}, "unknown option.*num_replica"),
        ({"model_source": "m", "num_replicas": "two"}, "num_replicas must be an integer"),
        ({"model_source": "m", "num_replicas": 0}, "num_replicas must be an int >= 1"),
        (
            {"model_source": "m", "num_replicas": 2, "autoscaling_config": {"max_replicas": 2}},
            "num_replicas or autoscaling_config",
        ),
        (
            {"model_source": "m", "autoscaling_config": "[1]"},
            "autoscaling_config must be a JSON object",
        ),
        (
            {"model_source": "m", "autoscaling_config": {"max_replica": 2}},
            "autoscaling_config: unknown key.*max_replica",
        ),
        (
            {"model_source": "m", "autoscaling_config": {"min_replicas": -1}},
            "autoscaling_config.min_replicas: Input should be greater than or equal to 0",
        ),
        ({"model_source": "m", "num_threads": 0}, "num_threads must be an int >= 1"),
        ({"model_source": "m", "dtype": "fp16"}, "dtype must be one of"),
        ({"model_source": "m", "kv_cache_dtype": "fp16"}, "kv_cache_dtype must be 'float32' or"),
        ({"model_source": "m", "allow_pickle": "maybe"}, "allow_pickle must be true or false"),
        ({"model_source": "m", "max_batch": "0"}, "max_batch must be an int >= 1"),
        ({"model_source": "m", "chat_template": "nope"}, "unknown chat template"),
        (
            {"model_source": "m", "api_keys": " , "},
            "api_keys must be a comma-separated or JSON list",
        ),
    ],
)
def test_a_bad_config_is_an_error_naming_the_option(args, message):
    with pytest.raises(ValueError, match=message):
        build_openai_app(args)


def test_serve_run_strings_are_parsed_into_the_config(monkeypatch):
    monkeypatch.delenv("GPT2GEN_API_KEY", raising=False)
    config = AppConfig.from_dict(
        {
            "model_source": "gpt2",
            "num_replicas": "3",
            "num_threads": "2",
            "api_keys": "a,b",
            "max_batch": "8",
            "allow_pickle": "true",
            "cors_origins": '["http://x"]',
        }
    )
    assert (config.num_replicas, config.num_threads, config.allow_pickle) == (3, 2, True)
    assert config.server.api_keys == ("a", "b") and config.server.cors_origins == ("http://x",)
    assert config.server.served_model_name == "gpt2" and config.server.max_batch == 8
    assert config.deployment_options() == {
        "name": "gpt2gen",
        "ray_actor_options": {"num_cpus": 2},
        "max_ongoing_requests": 8,
        "num_replicas": 3,
    }
    scaled = AppConfig.from_dict(
        {"model_source": "gpt2", "autoscaling_config": '{"max_replicas": 4}'}
    )
    assert scaled.deployment_options()["autoscaling_config"] == {
        "target_ongoing_requests": 16,
        "max_replicas": 4,
    }
    monkeypatch.setenv("GPT2GEN_API_KEY", "from-env")
    assert AppConfig.from_dict({"model_source": "gpt2"}).server.api_keys == ("from-env",)


def test_importing_gpt2gen_never_imports_ray_and_a_missing_ray_is_one_line(tmp_path):
    code = "import sys, gpt2gen; assert 'ray' not in sys.modules, 'gpt2gen imported ray'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT_SECONDS)
    blocked = tmp_path / "ray"  # a `ray` that cannot be imported, ahead of the real one
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError('no ray here', name='ray')\n")
    result = subprocess.run(
        [sys.executable, "-c", "import gpt2gen.ray_serve"],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last
        == 'ImportError: gpt2gen.ray_serve needs Ray Serve: pip install "gpt2gen[ray]" (ray is missing)'
    )


# --- on a local cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("ray_serve"))


@pytest.fixture(scope="module")
def model(model_dir):
    return gpt2gen.GPT2.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def cluster():
    """A new local Ray cluster (never one RAY_ADDRESS names) with Serve's proxy on a free port;
    yields the proxy's URL."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def client_for(base_url: str, key: str = KEY):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)


def test_serve_run_cli_deploys_with_its_key_value_arguments(cluster, model_dir, model):
    env = {k: v for k, v in os.environ.items() if k != "GPT2GEN_API_KEY"}
    command = [
        sys.executable,
        "-m",
        "ray.serve.scripts",
        "run",
        "gpt2gen.ray_serve:build_openai_app",
        f"model_source={model_dir}",
        "served_model_name=from-cli",
        "num_replicas=1",
        "num_threads=1",
        "max_batch=2",
        "api_keys=k1,k2",
        "--name",
        "cli",
        "--route-prefix",
        "/cli",
        "--non-blocking",
        "--address",
        ray.get_runtime_context().gcs_address,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=DEPLOY_SECONDS
    )
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        client = client_for(f"{cluster}/cli/v1", key="k2")
        assert [m.id for m in client.models.list().data] == ["from-cli"]
        completion = client.completions.create(
            model="from-cli", prompt="Once upon", max_tokens=12, seed=4
        )
        assert (
            completion.choices[0].text
            == model.generate("Once upon", 12, temperature=1.0, seed=4).text
        )
    finally:
        serve.delete("cli")


def test_a_model_that_cannot_load_fails_the_deployment_with_its_reason(cluster, tmp_path):
    missing = tmp_path / "no-such-model"
    app = build_openai_app({"model_source": str(missing), "num_replicas": 1})
    try:
        with pytest.raises(RuntimeError, match="Deploying application broken failed"):
            serve.run(app, name="broken", route_prefix="/broken")
        status = serve.status().applications["broken"].deployments["gpt2gen"]
        assert (
            f"'{missing}' is neither an existing directory nor a known model name" in status.message
        )
    finally:
        serve.delete("broken")


def test_a_client_that_disconnects_cancels_its_generation_on_the_replica(cluster, tmp_path):
    app = build_openai_app(
        {
            "model_source": str(make_slow_model_dir(tmp_path)),
            "num_replicas": 1,
            "served_model_name": MODEL_NAME,
        }
    )
    serve.run(app, name="slow", route_prefix="/slow")
    url = f"{cluster}/slow"
    endless = {
        "model": MODEL_NAME,
        "prompt": "hi",
        "max_tokens": SLOW_MAX_TOKENS,
        "ignore_eos": True,
    }
    try:
        with httpx.stream(
            "POST", f"{url}/v1/completions", json={**endless, "stream": True}, timeout=WAIT_SECONDS
        ) as response:
            assert next(response.iter_lines()).startswith("data: ")  # generating; now hang up
        cancelled = "gpt2gen_requests_finished_total"
        assert wait_metric(url, cancelled, lambda v: v == 1, finish_reason="cancelled") == 1
        # A client that gives up waiting for a whole answer: well before the slow model's 2000
        # tokens (~4.5 s on the fastest VM yet, serving.py).
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=endless, timeout=0.5)
        assert wait_metric(url, cancelled, lambda v: v == 2, finish_reason="cancelled") == 2
        assert metric(url, "gpt2gen_requests_running") == 0
    finally:
        serve.delete("slow")


@pytest.fixture(scope="module")
def url(cluster, model_dir):
    # max_ongoing_requests=2 below max_batch: a replica holds two requests, so concurrent ones
    # must spread over both replicas.
    app = build_openai_app(
        {
            "model_source": str(model_dir),
            "served_model_name": MODEL_NAME,
            "num_replicas": 2,
            "num_threads": 1,
            "api_keys": [KEY],
            "max_batch": 4,
            "max_ongoing_requests": 2,
        }
    )
    serve.run(app, name="openai", route_prefix="/")
    yield cluster
    serve.delete("openai")


REQUESTS = [
    {"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0},
    {"prompt": "Once upon a time", "max_tokens": 32, "seed": 1},
    {"prompt": "Alan Turing", "max_tokens": 48, "temperature": 0.8, "top_p": 0.9, "seed": 2},
    {
        "prompt": "hello",
        "max_tokens": 24,
        "temperature": 0.7,
        "top_k": 20,
        "seed": 3,
        "logprobs": 3,
    },
    {"prompt": "It was", "max_tokens": 40, "stop": ["e", "\n"], "temperature": 0},
    {
        "prompt": "A B C",
        "max_tokens": 36,
        "presence_penalty": 1.0,
        "frequency_penalty": 0.5,
        "seed": 5,
    },
    {"prompt": "Numbers 1 2 3", "max_tokens": 30, "min_p": 0.1, "seed": 6, "logprobs": 0},
    {"prompt": "zzz", "max_tokens": 44, "repetition_penalty": 1.3, "temperature": 0},
]
EXTENSIONS = ("top_k", "min_p", "repetition_penalty")  # gpt2gen's fields beyond OpenAI's


def offline(model, body: dict):
    """The library's completion for an OpenAI request body (OpenAI's defaults restated)."""
    return model.generate(
        body["prompt"],
        body["max_tokens"],
        temperature=body.get("temperature", 1.0),
        top_p=body.get("top_p", 1.0),
        top_k=body.get("top_k", 0),
        min_p=body.get("min_p", 0.0),
        repetition_penalty=body.get("repetition_penalty", 1.0),
        presence_penalty=body.get("presence_penalty", 0.0),
        frequency_penalty=body.get("frequency_penalty", 0.0),
        seed=body.get("seed"),
        stop_strings=body.get("stop"),
        logprobs=body.get("logprobs"),
    )


def test_two_replicas_answer_concurrent_requests_as_the_library_does(url, model):
    client = client_for(f"{url}/v1")

    def ask(body):
        standard = {k: v for k, v in body.items() if k not in EXTENSIONS}
        extra = {k: v for k, v in body.items() if k in EXTENSIONS}
        raw = client.completions.with_raw_response.create(
            model=MODEL_NAME, **standard, extra_body=extra
        )
        return raw.headers["x-gpt2gen-replica"], raw.parse()

    bodies = REQUESTS * 2  # each twice: the same answer from whichever replica serves it
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(ask, bodies))
    for body, (_, completion) in zip(bodies, answers):
        done = offline(model, body)
        choice = completion.choices[0]
        assert choice.text == done.text, body
        assert choice.finish_reason == openai_finish(done.finish_reason), body
        assert completion.usage.completion_tokens == len(done.token_ids)
        assert completion.usage.prompt_tokens == len(model.encode(body["prompt"]))
        if body.get("logprobs") is not None:
            expected = legacy_logprobs(model.encoder, done.token_ids, done.logprobs)
            assert choice.logprobs.model_dump() == expected, body
    assert len({replica for replica, _ in answers}) == 2, "one replica answered every request"


def test_a_stream_through_the_proxy_joins_to_the_library_text(url, model):
    stream = client_for(f"{url}/v1").completions.create(
        model=MODEL_NAME,
        prompt="Hello",
        max_tokens=30,
        seed=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    done = model.generate("Hello", 30, temperature=1.0, seed=9)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(done.token_ids)


def test_an_unknown_model_is_a_404_in_openai_shape(url):
    with pytest.raises(openai.NotFoundError) as caught:
        client_for(f"{url}/v1").completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert caught.value.status_code == 404
    assert caught.value.body == {
        "message": "The model `no-such-model` does not exist; this server serves `test-gpt2`",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_the_api_key_is_required_and_health_stays_open(url):
    with pytest.raises(openai.AuthenticationError):
        client_for(f"{url}/v1", key="wrong").models.list()
    response = httpx.post(
        f"{url}/v1/completions", json={"model": MODEL_NAME, "prompt": "hi"}, timeout=60
    )
    assert response.status_code == 401 and set(response.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert httpx.get(f"{url}/health", timeout=60).json() == {"status": "ok"}
    assert [m.id for m in client_for(f"{url}/v1").models.list().data] == [MODEL_NAME]


def test_every_replica_reserves_its_threads_as_cpus(url):
    status = serve.status().applications["openai"].deployments["gpt2gen"]
    assert status.replica_states == {"RUNNING": 2}
    # 2 replicas x num_threads=1 hold the cluster's 2 CPUs (Serve's controller and proxy hold
    # none); the resource view Ray reports is refreshed asynchronously, hence the bounded wait.
    deadline = time.monotonic() + WAIT_SECONDS
    while ray.available_resources().get("CPU", 0) != 0:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.2)
