"""Concurrency: one model shared by many Python threads.

``gpt2gen._core.Model`` is immutable after construction (pointers to the caller's arrays, read
only) and every generation owns its state (KV cache, scratch, sampler), so any number of threads
may generate from one model at once and each gets exactly what it gets alone. The C++ loop runs
without the GIL, so other Python threads keep running meanwhile, and a ``CancelToken`` set from
another thread stops one generation without disturbing the others.

A request handle may be consumed from several threads: its methods take a mutex (without the
GIL). Before that lock the older step-by-step interface crashed (B5 in docs/SAFETY.md; test below).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import engine_requests
import gpt2gen
from gpt2gen import _core
from gpt2gen.options import seeds
from isolated import run_isolated
from random_models import random_params

N_HEAD = 4
N_THREADS = 8


@pytest.fixture
def one_omp_thread():
    """Eight generations at once each running a team of OpenMP threads oversubscribe 2 cores
    (N Python threads x num_threads() OS threads, spinning at barriers): correct, but slow on a
    busy machine. Tests that are not about OpenMP run each generation on one thread."""
    before = gpt2gen.num_threads()
    gpt2gen.set_num_threads(1)
    yield
    gpt2gen.set_num_threads(before)


@pytest.fixture(scope="module")
def params():
    return random_params(np.random.default_rng(21), n_layer=2, n_embd=64, n_head=N_HEAD, n_vocab=300, n_ctx=256)


@pytest.fixture(scope="module")
def model(params):
    return _core.Model(params, N_HEAD)


def _jobs():
    """Eight different requests: single and batched prompts, greedy and seeded sampling."""
    rng = np.random.default_rng(5)
    jobs = []
    for k in range(N_THREADS):
        if k % 2 == 0:
            prompts = [list(rng.integers(0, 300, 3 + k))]
        else:
            prompts = [list(rng.integers(0, 300, n)) for n in (2, 5 + k, 1)]
        sampling = {} if k % 4 < 2 else dict(temperature=0.9, top_k=40, top_p=0.95, seed=100 + k)
        if k == 7:
            sampling.update(repetition_penalty=1.3, frequency_penalty=0.5, seed=[1, 2, 3])
        jobs.append((prompts, 24, sampling))
    return jobs


def _run(model, job):
    """The job's new ids per prompt, on a scheduler of its own over the shared model."""
    prompts, n, sampling = job
    sampling = dict(sampling)
    seed_values = seeds(sampling.pop("seed", 0), len(prompts))
    return [tokens for tokens, _, _ in engine_requests.run(model, prompts, n, seed_values, **sampling)]


def _in_threads(work, n_threads=N_THREADS, repeat=1):
    """Runs work(k) for k in range(n_threads), each in its own thread, all released at once."""
    barrier = threading.Barrier(n_threads)
    results: dict = {}
    errors: list = []

    def body(k):
        try:
            barrier.wait()
            results[k] = [work(k) for _ in range(repeat)]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((k, e))

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors
    return results


@pytest.mark.parametrize("omp_threads", [1, 2])
def test_shared_model_gives_every_thread_its_own_result(model, omp_threads):
    jobs = _jobs()
    alone = [_run(model, job) for job in jobs]
    assert len({str(a) for a in alone}) == len(alone)  # eight genuinely different results
    before = gpt2gen.num_threads()
    gpt2gen.set_num_threads(omp_threads)  # 2: eight OpenMP teams at once
    try:
        results = _in_threads(lambda k: _run(model, jobs[k]), repeat=2)
    finally:
        gpt2gen.set_num_threads(before)
    for k in range(N_THREADS):
        assert results[k] == [alone[k]] * 2, f"thread {k}"


def test_shared_params_through_the_public_api(one_omp_thread, params):
    """gpt2gen.generate/forward from many threads over the same parameter arrays."""
    rng = np.random.default_rng(6)
    prompts = [list(rng.integers(0, 300, 4 + k)) for k in range(N_THREADS)]
    alone_ids = [gpt2gen.generate(p, params, N_HEAD, 16, temperature=0.7, seed=k) for k, p in enumerate(prompts)]
    alone_logits = [gpt2gen.forward(p, params, N_HEAD) for p in prompts]

    def work(k):
        return (gpt2gen.generate(prompts[k], params, N_HEAD, 16, temperature=0.7, seed=k),
                gpt2gen.forward(prompts[k], params, N_HEAD))

    results = _in_threads(work)
    for k in range(N_THREADS):
        for ids, logits in results[k]:
            assert ids == alone_ids[k]
            np.testing.assert_array_equal(logits, alone_logits[k])  # bit-identical


def test_threads_share_one_scheduler(one_omp_thread, model):
    """Every thread submits its requests to one scheduler over the shared model."""
    jobs = _jobs()
    alone = [_run(model, job) for job in jobs]
    scheduler = _core.Scheduler(model, max_batch=5)
    from gpt2gen.options import generation_options

    def work(k):
        prompts, n, sampling = jobs[k]
        sampling = dict(sampling)
        seed_values = seeds(sampling.pop("seed", 0), len(prompts))
        requests = scheduler.submit(prompts, [generation_options(n, **sampling)], seeds=seed_values)
        return [engine_requests.collect(r)[0] for r in requests]

    results = _in_threads(work)
    scheduler.shutdown()
    for k in range(N_THREADS):
        assert results[k] == [alone[k]]


def test_cancel_one_generation_while_others_run(one_omp_thread, params, model):
    long_params = random_params(np.random.default_rng(22), n_layer=2, n_embd=64, n_head=N_HEAD, n_vocab=300,
                                n_ctx=128)
    endless = dict(context_overflow="slide")  # 10**7 tokens: runs until cancelled
    jobs = _jobs()
    alone = [_run(model, job) for job in jobs]
    token = gpt2gen.CancelToken()
    produced = []
    started = threading.Event()
    outcome = {}

    def long_generation():
        def on_token(i, t):
            produced.append(t)
            if len(produced) == 3:
                started.set()
            return True
        outcome["ids"] = gpt2gen.generate([[1, 2, 3]], long_params, N_HEAD, 10**7, on_token=on_token,
                                          cancel=token, **endless)

    runner = threading.Thread(target=long_generation)
    runner.start()
    assert started.wait(60)
    others = _in_threads(lambda k: _run(model, jobs[k]), repeat=2)  # while the long one runs
    assert runner.is_alive()
    token.cancel()
    runner.join(60)
    assert not runner.is_alive(), "the cancelled generation did not stop"
    ids = outcome["ids"][0]
    assert token.cancelled and 3 <= len(ids) < 10**7 and ids == produced
    for k in range(N_THREADS):
        assert others[k] == [alone[k]] * 2
    # What it produced before the cancel is what an uncancelled run produces, and the models work.
    n = min(len(ids), 200)
    assert gpt2gen.generate([[1, 2, 3]], long_params, N_HEAD, n, **endless) == [ids[:n]]
    assert [_run(model, job) for job in jobs] == alone


def test_cancel_before_start_and_cancel_without_a_callback(params):
    token = gpt2gen.CancelToken()
    token.cancel()
    assert gpt2gen.generate([1, 2], params, N_HEAD, 50, cancel=token) == []
    assert gpt2gen.generate([[1], [2, 3]], params, N_HEAD, 50, cancel=token) == [[], []]
    # Without on_token nothing in the loop takes the GIL, so the cancelling thread must be able to
    # run while the loop does: a timer thread cancels a generation that would take minutes.
    long_params = random_params(np.random.default_rng(23), n_layer=2, n_embd=64, n_head=N_HEAD, n_vocab=300,
                                n_ctx=64)
    token = gpt2gen.CancelToken()
    timer = threading.Timer(0.3, token.cancel)
    t0 = time.perf_counter()
    timer.start()
    out = gpt2gen.generate([1], long_params, N_HEAD, 10**7, context_overflow="slide", cancel=token)
    elapsed = time.perf_counter() - t0
    timer.join()
    assert len(out) < 10**7 and elapsed < 30


def test_changing_the_thread_count_concurrently_changes_nothing(model, params):
    jobs = _jobs()
    ids = np.random.default_rng(8).integers(0, 300, 100)
    before = gpt2gen.num_threads()
    alone = [_run(model, job) for job in jobs]
    logits = model.forward(ids)
    stop = threading.Event()

    def flip():
        n = 0
        while not stop.is_set():
            gpt2gen.set_num_threads(1 + n % 3)  # 1, 2, 3 (more would only oversubscribe 2 cores)
            n += 1
            time.sleep(0.001)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        results = _in_threads(lambda k: (_run(model, jobs[k]), model.forward(ids)), n_threads=4)
    finally:
        stop.set()
        flipper.join()
        gpt2gen.set_num_threads(before)
    for k in range(4):
        for out, lg in results[k]:
            assert out == alone[k]
            np.testing.assert_array_equal(lg, logits)


def _counting(call):
    """Counts per second of a pure-Python thread while this thread sleeps, and while call() runs."""
    count = [0]
    stop = threading.Event()
    running = threading.Event()

    def counter():
        running.set()
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=counter)
    t.start()
    running.wait()
    try:
        c0, t0 = count[0], time.perf_counter()
        time.sleep(0.1)  # releases the GIL: the counter's free-running rate
        c1, t1 = count[0], time.perf_counter()
        call()
        c2, t2 = count[0], time.perf_counter()
    finally:
        stop.set()
        t.join()
    return (c1 - c0) / (t1 - t0), (c2 - c1) / (t2 - t1), t2 - t1


def _long_enough(make_call, size, seconds=0.3):
    """make_call(size) scaled up until one call takes about `seconds`."""
    t0 = time.perf_counter()
    make_call(size)()
    elapsed = time.perf_counter() - t0
    return make_call(max(size, int(size * seconds / max(elapsed, 1e-3))))


@pytest.mark.parametrize("what", ["generate", "forward", "score"])
def test_the_gil_is_released_during_the_work(one_omp_thread, what):
    params = random_params(np.random.default_rng(24), n_layer=4, n_embd=128, n_head=N_HEAD, n_vocab=1000, n_ctx=1024)
    model = _core.Model(params, N_HEAD)
    if what == "generate":
        call = _long_enough(lambda n: lambda: gpt2gen.generate([1, 2], params, N_HEAD, min(n, 1000)), 20)
    elif what == "forward":
        call = _long_enough(lambda n: lambda: model.forward(np.arange(min(n, 1024)) % 1000), 100)
    else:
        call = _long_enough(lambda n: lambda: model.score(np.arange(min(n, 1024)) % 1000), 100)
    free, during, elapsed = _counting(call)
    # One call, no Python in between: with the GIL held the counter could run at most one switch
    # interval (5 ms) of it, i.e. a ratio of ~0.02 for a 0.3 s call. Released, the counter has
    # the other core (the engine runs on one thread here): a ratio near 1 on an idle machine.
    ratio = during / free
    assert ratio > 0.15, f"{what}: the counter ran at {ratio:.2f} of its free rate during {elapsed:.2f} s"


def test_python_threads_interleave_with_many_generations(one_omp_thread, model):
    """Several threads generating and one doing pure Python all make progress."""
    jobs = _jobs()
    ticks = [0]
    stop = threading.Event()

    def python_work():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=python_work)
    t.start()
    try:
        _in_threads(lambda k: _run(model, jobs[k]), repeat=3)
    finally:
        stop.set()
        t.join()
    assert ticks[0] > 1000


def _run_isolated(code: str, timeout: float = 300):
    return run_isolated(code, timeout=timeout)


def test_one_request_consumed_from_several_threads():
    """One request's hand-off read by four threads at once: no crash, and together they see every
    token once, in order (the older step-by-step interface segfaulted here before a mutex)."""
    out = _run_isolated("""
        import threading
        import engine_requests
        from gpt2gen import _core
        from gpt2gen.options import generation_options
        params = random_params(np.random.default_rng(0), n_layer=2, n_embd=64, n_head=4, n_vocab=500, n_ctx=1024)
        model = _core.Model(params, 4)
        scheduler = _core.Scheduler(model, max_batch=8)
        (alone,) = engine_requests.run(model, [[1, 2, 3]], 120, seeds=[1], temperature=0.8)
        for trial in range(3):
            (r,) = scheduler.submit([[1, 2, 3]], [generation_options(120, temperature=0.8)], seeds=[1])
            taken, lock, done = [], threading.Lock(), threading.Event()
            def run():
                while not done.is_set():
                    r.wait(0.01)
                    with lock:
                        tokens, _, finish = r.take()
                        taken.extend(tokens)
                        if finish is not None:
                            done.set()
            threads = [threading.Thread(target=run) for _ in range(4)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            assert taken == alone[0], (taken, alone[0])
        scheduler.shutdown()
        print("ok")
    """, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-3000:])


def test_idle_engine_keeps_no_openmp_workers():
    """libgomp keeps worker threads for every thread that ran a parallel region, and while a
    process holds more of them than CPUs its waits stop spinning, which made decode ~2× slower
    after one forward() on another thread. forward and score free their caller's workers when
    they end; a scheduler frees its own once it has been idle a moment (100 ms)."""
    out = run_isolated("""
        import os, time
        gpt2gen.set_num_threads(3)  # workers even on a 1-CPU machine
        params = random_params(np.random.default_rng(0), n_layer=2, n_embd=64, n_head=4, n_vocab=300, n_ctx=128)
        model = gpt2gen._core.Model(params, 4)

        def threads():
            return len(os.listdir("/proc/self/task"))

        def settles_at(n):  # workers exit asynchronously; the scheduler frees its own after the finish
            deadline = time.monotonic() + 10
            while threads() != n and time.monotonic() < deadline:
                time.sleep(0.01)
            return threads()

        before = threads()
        model.forward(list(range(1, 60)))
        model.score(list(range(1, 60)))
        after_calls = settles_at(before)
        scheduler = gpt2gen._core.Scheduler(model, max_batch=1, max_queue=1)
        options = gpt2gen.options.generation_options(20)
        [request] = scheduler.submit([[1, 2, 3]], [options], seeds=[0], together=True, what="inputs")
        while not request.finished:
            request.wait(0.05)
        print(before, after_calls, settles_at(before + 1))
    """)
    assert out.returncode == 0, out.stderr
    before, after_calls, settled = map(int, out.stdout.split())
    assert after_calls == before
    assert settled == before + 1  # the scheduler's own thread only
