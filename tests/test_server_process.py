"""``gpt2gen serve`` as a user runs it: the command line, its errors, keys from the environment,
CORS, and a storm of good and malformed requests from many clients after which the server is
healthy, has answered no 500 and has not grown."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading

import httpx
import pytest

import gpt2gen
from serving import MODEL_NAME, make_model_dir, metric, serve_process, wait_healthy, wait_metric

pytestmark = pytest.mark.service  # a real server on 127.0.0.1

openai = pytest.importorskip("openai")

CLI = [sys.executable, "-c", "import sys, gpt2gen.cli; sys.exit(gpt2gen.cli.main())"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("process"))


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_error_line(result) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("gpt2gen: error: "), result.stderr
    return lines[-1]


def test_import_gpt2gen_does_not_import_the_server_dependencies():
    code = ("import sys, gpt2gen; bad = [m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'pydantic', "
            "'gpt2gen.server') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_entry_point_has_serve():
    entry = shutil.which("gpt2gen", path=os.path.dirname(sys.executable)) or shutil.which("gpt2gen")
    if entry is None:
        pytest.skip("the gpt2gen entry point is not installed")
    result = subprocess.run([entry, "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--model", "--host", "--port", "--dtype", "--kv-cache-dtype", "--api-key", "--max-batch", "--max-queue",
                 "--threads", "--served-model-name", "--cors-origins", "--chat-template"):
        assert flag in result.stdout


def test_a_missing_extra_is_one_clear_line():
    code = ("import sys; sys.modules['fastapi'] = None; import gpt2gen.cli; "
            "sys.exit(gpt2gen.cli.main(['serve', '--model', 'gpt2']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = one_error_line(result)
    assert "fastapi is missing" in line and "pip install 'gpt2gen[serve]'" in line


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/model-dir"], "the model failed to load"),
    (["--port", "70000"], "--port"),
    (["--threads", "0"], "--threads"),
    (["--max-batch", "0"], "max_batch"),
    (["--max-queue", "-3"], "max_queue"),
])
def test_command_line_errors_are_one_line(model_dir, args, message):
    full = args if "--model" in args else ["--model", str(model_dir), *args]
    if "--port" not in full:
        full += ["--port", "0"]
    line = one_error_line(run_cli("serve", *full))
    assert message in line


def test_a_port_in_use_is_an_error(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--model", str(model_dir), "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1 and "address already in use" in result.stderr


def test_bad_arguments_are_usage_errors():
    for flag in ("--dtype", "--kv-cache-dtype"):
        result = run_cli("serve", "--model", "x", flag, "float16")
        assert result.returncode == 2 and "invalid choice" in result.stderr
    assert run_cli("serve").returncode == 2  # --model is required


def test_serve_from_the_command_line(model_dir):
    env = {"GPT2GEN_API_KEY": "s3cret"}
    with serve_process("--model", str(model_dir), "--served-model-name", MODEL_NAME, "--chat-template", "plain",
                       "--cors-origins", "http://app.example", env=env) as (url, process):
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        wait_healthy(url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        reply = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=8, temperature=0)
        model = gpt2gen.GPT2.from_pretrained(model_dir)
        assert reply.choices[0].text == model.generate("Hello", 8).text
        chat = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=5, temperature=0)
        assert chat.choices[0].message.content == model.generate(
            "User: Hi\nAssistant:", 5, stop_strings=["\nUser:", "\nSystem:"]).text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        preflight = httpx.options(f"{url}/v1/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.get(f"{url}/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    assert process.returncode is not None


# --- the storm ---------------------------------------------------------------------------------

BODY_LIMIT = 32 * 1024


def storm_request(url: str, rng: random.Random) -> int | None:
    """One request of a random kind; the HTTP status (None when the client hung up on purpose)."""
    host, port = url.removeprefix("http://").split(":")
    good = {"model": MODEL_NAME, "prompt": "storm " * rng.randint(1, 20), "max_tokens": rng.randint(1, 30),
            "temperature": rng.choice([0, 0.9]), "seed": rng.randint(0, 99)}
    kind = rng.choice(["good", "good", "stream", "stream_abort", "wait_abort", "bad_json", "bad_field",
                       "huge", "garbage", "half_body", "route", "chat", "tokenize", "n_many"])
    post = f"{url}/v1/completions"
    if kind == "good":
        return httpx.post(post, json=good, timeout=120).status_code
    if kind == "stream":
        with httpx.stream("POST", post, json={**good, "stream": True}, timeout=120) as response:
            body = response.read().decode()
            assert response.status_code != 200 or body.endswith("data: [DONE]\n\n")
            return response.status_code
    if kind == "stream_abort":
        with httpx.stream("POST", post, json={**good, "stream": True, "max_tokens": 100}, timeout=120) as response:
            next(response.iter_raw(), None)
        return None
    if kind == "wait_abort":
        try:
            httpx.post(post, json={**good, "max_tokens": 100}, timeout=httpx.Timeout(120, read=0.01))
        except httpx.ReadTimeout:
            return None
        return 200
    if kind == "bad_json":
        raw = rng.choice([b"{", b'{"prompt": NaN}', bytes(rng.randrange(256) for _ in range(50)), b"[" * 5000])
        return httpx.post(post, content=raw, timeout=120).status_code
    if kind == "bad_field":
        field, value = rng.choice([("temperature", -1), ("n", 0), ("logprobs", 99), ("prompt", [[-5]]),
                                   ("stop", {"a": 1}), ("max_tokens", 10**9), ("top_p", "x"), ("surprise", 1)])
        return httpx.post(post, json={**good, field: value}, timeout=120).status_code
    if kind == "huge":
        return httpx.post(post, json={**good, "prompt": "x" * (BODY_LIMIT + 10)}, timeout=120).status_code
    if kind in ("garbage", "half_body"):
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            if kind == "garbage":
                raw.sendall(bytes(rng.randrange(256) for _ in range(200)) + b"\r\n\r\n")
            else:
                raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"pro")
        return None
    if kind == "route":
        return httpx.get(f"{url}/v1/{rng.choice(['engines', 'files', 'completions'])}", timeout=120).status_code
    if kind == "chat":
        return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).status_code
    if kind == "tokenize":
        return httpx.post(f"{url}/tokenize", json={"prompt": good["prompt"]}, timeout=120).status_code
    return httpx.post(post, json={**good, "n": 8, "prompt": ["a", "b"]}, timeout=120).status_code  # n_many


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's memory from /proc")
def test_a_storm_of_good_and_malformed_requests(model_dir):
    clients, per_client, rounds = 12, 20, 4
    with serve_process("--model", str(model_dir), "--served-model-name", MODEL_NAME, "--max-batch", "4",
                       "--max-queue", "16", "--max-body-bytes", str(BODY_LIMIT)) as (url, process):
        wait_healthy(url)
        statuses: list = []
        failures: list = []
        sizes = []

        def client(k: int, round_: int):
            rng = random.Random(round_ * 1000 + k)
            try:
                for _ in range(per_client):
                    statuses.append(storm_request(url, rng))
            except Exception as error:  # noqa: BLE001 - reported below with the others
                failures.append(repr(error))

        for round_ in range(rounds):
            threads = [threading.Thread(target=client, args=(k, round_)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            assert not any(t.is_alive() for t in threads), "a client hung"
            assert wait_metric(url, "gpt2gen_requests_running", lambda v: v == 0) == 0
            assert wait_metric(url, "gpt2gen_requests_waiting", lambda v: v == 0) == 0
            sizes.append(rss_bytes(process.pid))

        assert not failures, failures[:5]
        seen = {s for s in statuses if s is not None}
        assert seen <= {200, 400, 404, 405, 413, 429}, seen
        assert {200, 400, 404, 413} <= seen
        assert metric(url, "gpt2gen_http_responses_total", status="500") == 0
        assert httpx.get(f"{url}/health").status_code == 200
        # still exact after all that
        model = gpt2gen.GPT2.from_pretrained(model_dir)
        reply = httpx.post(f"{url}/v1/completions", json={"model": MODEL_NAME, "prompt": "after the storm",
                                                          "max_tokens": 12, "seed": 5}).json()
        assert reply["choices"][0]["text"] == model.generate("after the storm", 12, temperature=1.0, seed=5).text
        # memory is flat: after the first round warmed every path, later rounds add nothing lasting
        growth = sizes[-1] - sizes[1]
        assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over {rounds - 2} rounds: {sizes}"
        print(json.dumps({"rss_mib": [round(s / 2**20, 1) for s in sizes], "requests": len(statuses)}))
