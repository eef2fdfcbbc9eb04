"""A process that used gpt2gen can fork, and every long call stops on Ctrl-C."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from isolated import isolated_env, run_isolated

TESTS = str(Path(__file__).resolve().parent)


def test_forked_children_generate_the_parents_results():
    # The parent generates first (its OpenMP pools exist, on this thread and on the scheduler's),
    # then children made with fork() generate in parallel: they must finish, with the same tokens.
    out = run_isolated("""
        import multiprocessing as mp
        gpt2gen.set_num_threads(2)
        params = random_params(np.random.default_rng(0), n_layer=2, n_embd=64, n_head=4, n_vocab=300, n_ctx=128)
        from gpt2gen import GPT2
        from gpt2gen.tokenizer import Tokenizer

        def work(seed):
            ids = gpt2gen.generate([1, 2, 3], params, 4, 40, temperature=0.9, seed=seed)
            logits = gpt2gen.forward(list(range(1, 100)), params, 4)
            return ids, float(logits.sum())

        parent = [work(s) for s in range(4)]
        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            children = pool.map_async(work, range(4)).get(timeout=120)
        assert children == parent, (children, parent)
        print("ok")
    """, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_a_forked_child_gets_a_fresh_scheduler(tmp_path):
    out = run_isolated("""
        import os
        from gpt2gen import GPT2
        from conftest import make_numpy_gpt2
        from pathlib import Path
        model_dir, _ = make_numpy_gpt2(Path(TMP), n_layer=2, n_embd=32, n_head=4, vocab_size=300, n_positions=64)
        model = GPT2.from_pretrained(model_dir)
        parent = model.generate("hello", 20, temperature=0.8, seed=3)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            child = model.generate("hello", 20, temperature=0.8, seed=3)
            os.write(w, b"same" if child == parent else b"diff")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(os.read(r, 4).decode(), status)
    """.replace("TMP", repr(str(tmp_path))), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["same", "0"]


LONG_CALL = """
    import time, json, signal
    # A child of a background job starts with SIGINT ignored (so Python would not raise
    # KeyboardInterrupt); Ctrl-C at a terminal is what this test stands for.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    params = random_params(np.random.default_rng(0), n_layer=6, n_embd=256, n_head=4, n_vocab=2000,
                           n_ctx=1024)
    model = gpt2gen._core.Model(params, 4)
    calls = {
        "generate": lambda: gpt2gen.generate([1, 2], params, 4, 1000),
        "batch": lambda: gpt2gen.generate([[1, 2]] * 4, params, 4, 1000),
        "forward": lambda: [model.forward(list(range(1, 1024))) for _ in range(20)],
        "score": lambda: [model.score(list(range(1, 1024))) for _ in range(20)],
    }
    call = calls[WHAT]
    print("ready", flush=True)
    t0 = time.monotonic()
    try:
        call()
        print(json.dumps({"outcome": "finished", "seconds": time.monotonic() - t0}), flush=True)
    except KeyboardInterrupt:
        print(json.dumps({"outcome": "interrupted", "at": time.monotonic(),
                          "live": gpt2gen._core.live_sequences()}), flush=True)
"""


@pytest.mark.parametrize("what", ["generate", "batch", "forward", "score"])
def test_ctrl_c_interrupts_a_long_call_within_a_step(what):
    prelude = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import numpy as np, gpt2gen
        from random_models import random_params
        WHAT = {what!r}
    """)
    child = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(LONG_CALL)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=isolated_env())
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # well inside the call, which takes many seconds
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        report = json.loads(child.stdout.readline())
        child.wait(timeout=60)
    finally:
        child.kill()
    assert report["outcome"] == "interrupted", report
    # One step of these calls takes well under a second even on a loaded machine; the whole call
    # takes far longer. (time.monotonic is system-wide, so the two processes' clocks agree.)
    assert report["at"] - sent < 2.0, report
    assert report["live"] == 0  # what the call allocated is freed
