"""Helpers for the server tests: a real uvicorn server on 127.0.0.1, the reference model, and the
OpenAI conventions the tests restate independently of the server's code.

``running(app)`` serves an app from a thread on a port the OS picks (the socket is bound before
uvicorn starts, so there is no race for the port); ``serve_process(...)`` runs ``gpt2gen serve``
as a user would, in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the server tests need the serve extra")
pytest.importorskip("openai", reason="the server tests drive the server with the openai client")
import uvicorn  # noqa: E402

from conftest import make_numpy_gpt2  # noqa: E402

MODEL_NAME = "test-gpt2"
WAIT_SECONDS = 60  # bound on every wait for the server (a busy 2-core machine is slow)


def make_model_dir(root, **config) -> Path:
    """A random GPT-2 checkpoint with a real byte-level BPE tokenizer (400 ids, EOS = 399)."""
    settings = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=400, n_positions=128, seed=3)
    settings.update(config)
    model_dir, _ = make_numpy_gpt2(root, **settings)
    return model_dir


# A model whose long generations take seconds, not milliseconds, even on a fast machine: a request
# of SLOW_MAX_TOKENS is still running when the test acts on it (cancels it, queues behind it). Its
# weights (~50 MB) do not fit in the L3, so they stream from memory at every token: 2000 tokens
# took ~4.5 s on the fastest VM yet, where 256 wide (L3-resident) took 0.7 s and a request given
# up after 0.5 s had already produced 1005. Seed 5: greedy from "Once upon a time" runs all
# SLOW_MAX_TOKENS without an end-of-text (the playground's Stop test relies on it).
SLOW_MAX_TOKENS = 2000


def make_slow_model_dir(root) -> Path:
    return make_model_dir(root, n_layer=4, n_embd=512, n_head=4, n_positions=2048, seed=5, name="slow")


@contextlib.contextmanager
def running(app):
    """Serves ``app`` with uvicorn from a thread; yields the base URL (``http://127.0.0.1:PORT``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(WAIT_SECONDS)
        sock.close()


def wait_healthy(url: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never became healthy"
        time.sleep(0.1)


@contextlib.contextmanager
def serve_process(*args, env=None):
    """``gpt2gen serve ARGS --port 0`` in a subprocess; yields (url, process) once it listens."""
    command = [sys.executable, "-c", "import sys, gpt2gen.cli; sys.exit(gpt2gen.cli.main())",
               "serve", *args, "--port", "0", "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    try:
        url = _announced_url(process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()


def _announced_url(process) -> str:
    lines = []
    result: dict = {}

    def read():
        for line in process.stderr:
            lines.append(line)
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                result["url"] = found.group(1)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(WAIT_SECONDS)
    assert "url" in result, f"gpt2gen serve did not announce its port:\n{''.join(lines)}"
    # keep draining stderr so the server never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
    return result["url"]


def metric(url: str, name: str, **labels) -> float:
    """One sample from /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def wait_metric(url: str, name: str, predicate, seconds: float = WAIT_SECONDS, **labels) -> float:
    deadline = time.monotonic() + seconds
    while True:
        value = metric(url, name, **labels)
        if predicate(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# --- OpenAI's conventions, restated -------------------------------------------------------------


def token_string(tokenizer, token: int) -> str:
    """A token's string in logprobs: its text, or ``bytes:\\xNN...`` when not UTF-8 on its own."""
    data = tokenizer.token_bytes(token)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def finite(x: float) -> float:
    return x if x not in (float("inf"), float("-inf")) and x == x else -9999.0


def openai_finish(reason: str) -> str:
    return {"eos": "stop", "stop": "stop", "length": "length"}[reason]


def legacy_logprobs(tokenizer, token_ids, entries, start: int = 0) -> dict:
    """OpenAI's completions logprobs object for ``token_ids`` (``entries`` from the library;
    an entry of None for the first prompt token)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, position = [], start
    for token in token_ids:
        offsets.append(position)
        position += len(decoder.decode(tokenizer.token_bytes(token)))
    top = []
    for token, entry in zip(token_ids, entries):
        if entry is None:
            top.append(None)
            continue
        alternatives = {token_string(tokenizer, a): finite(lp) for a, _, lp in entry.top}
        alternatives.setdefault(token_string(tokenizer, token), finite(entry.logprob))
        top.append(alternatives)
    return {"tokens": [token_string(tokenizer, t) for t in token_ids],
            "token_logprobs": [None if e is None else finite(e.logprob) for e in entries],
            "top_logprobs": top, "text_offset": offsets}


def sse_events(body: str) -> list:
    """The ``data:`` payloads of an event stream, checking OpenAI's framing on the way."""
    assert body.endswith("\n\n"), "an event stream ends with a blank line"
    events = body[:-2].split("\n\n")
    payloads = []
    for raw in events:
        assert raw.startswith("data: ") and "\n" not in raw, f"not an SSE data event: {raw!r}"
        payloads.append(raw[len("data: "):])
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    return payloads[:-1]
