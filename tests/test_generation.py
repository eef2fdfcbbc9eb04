"""Generation controls: sampling processors against transformers', seeds, batching, stopping,
log-probabilities, scoring, the sliding context and cancellation."""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine_requests
import gpt2gen
from gpt2gen import _core, _testing, reference
from gpt2gen.engine import processed_probabilities
from gpt2gen.options import generation_options
from random_models import random_params


@pytest.fixture(scope="module")
def params():
    return random_params(np.random.default_rng(0), n_layer=2, n_embd=32, n_head=4, n_vocab=211,
                         n_ctx=96, scale=0.3)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


# --- the processors against transformers ---------------------------------------------------


def transformers_probabilities(logits, prompt_ids, output_ids, *, temperature, top_k, top_p, min_p,
                               repetition_penalty):
    torch = pytest.importorskip("torch", reason="transformers' processors need torch")
    lp = pytest.importorskip("transformers.generation.logits_process",
                             reason="transformers is the reference for the processors")
    input_ids = torch.tensor([list(prompt_ids) + list(output_ids)], dtype=torch.long)
    scores = torch.tensor(logits[None, :])
    processors = []
    if repetition_penalty != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature != 1.0:
        processors.append(lp.TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(lp.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(lp.TopPLogitsWarper(top_p))
    if min_p > 0:
        processors.append(lp.MinPLogitsWarper(min_p))
    for processor in processors:
        scores = processor(input_ids, scores)
    return torch.softmax(scores.double(), dim=-1)[0].numpy()


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_vocab=st.integers(2, 3000),
    scale=st.sampled_from([0.5, 2.0, 8.0]),
    temperature=st.sampled_from([1.0, 0.3, 0.7, 1.5]),
    top_k=st.sampled_from([0, 1, 5, 40, 5000]),
    top_p=st.sampled_from([1.0, 0.95, 0.6, 0.1]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
    repetition_penalty=st.sampled_from([1.0, 1.3, 0.8]),
)
def test_processed_distribution_matches_transformers(seed, n_vocab, scale, temperature, top_k,
                                                     top_p, min_p, repetition_penalty):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(n_vocab) * scale).astype(np.float32)
    prompt = rng.integers(0, n_vocab, 6)
    output = rng.integers(0, n_vocab, 4)
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                   repetition_penalty=repetition_penalty)
    ours = processed_probabilities(logits, prompt, output, **options)
    theirs = transformers_probabilities(logits, prompt, output, **options)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_presence_and_frequency_penalties_follow_openai():
    logits = np.array([1.0, 2.0, 3.0, 0.5], np.float64)
    output = [2, 2, 0]
    probs = processed_probabilities(logits, [1], output, temperature=1.0, presence_penalty=0.5,
                                    frequency_penalty=0.25)
    counts = np.bincount(output, minlength=4)
    expected = logits - 0.5 * (counts > 0) - 0.25 * counts  # prompt ids are not penalized
    np.testing.assert_allclose(probs, np.exp(log_softmax(expected)), rtol=1e-12)


def test_top_k_1_sampling_is_greedy(params):
    prompt = [5, 6, 7]
    greedy = gpt2gen.generate(prompt, params, 4, 40)
    assert gpt2gen.generate(prompt, params, 4, 40, temperature=0.8, top_k=1, seed=3) == greedy
    assert gpt2gen.generate(prompt, params, 4, 40, temperature=1.5, top_k=1) == greedy


def test_greedy_with_repetition_penalty_matches_a_numpy_loop(params):
    prompt, ids = [1, 2, 3], [1, 2, 3]
    for _ in range(30):
        scores = reference.gpt2(np.array(ids), **params, n_head=4)[-1].astype(np.float64)
        seen = np.unique(ids)
        scores[seen] = np.where(scores[seen] < 0, scores[seen] * 1.5, scores[seen] / 1.5)
        ids.append(int(np.argmax(scores)))
    assert gpt2gen.generate(prompt, params, 4, 30, repetition_penalty=1.5) == ids[3:]


# --- seeds and reproducibility ----------------------------------------------------------------

SAMPLED = dict(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1)


def test_same_seed_same_tokens_and_other_seeds_differ(params):
    a = gpt2gen.generate([1, 2], params, 4, 60, seed=1234, **SAMPLED)
    assert a == gpt2gen.generate([1, 2], params, 4, 60, seed=1234, **SAMPLED)
    assert a != gpt2gen.generate([1, 2], params, 4, 60, seed=1235, **SAMPLED)


def test_seed_is_independent_of_thread_count(params):
    before = gpt2gen.num_threads()
    try:
        runs = []
        for threads in (1, 2):
            gpt2gen.set_num_threads(threads)
            runs.append(gpt2gen.generate([[1, 2], [9, 8, 7, 6]], params, 4, 50, seed=7, **SAMPLED))
    finally:
        gpt2gen.set_num_threads(before)
    assert runs[0] == runs[1]


def test_sampling_follows_the_distribution(params):
    # Empirical frequencies of the first token against the processed distribution.
    model = _core.Model(params, 4)
    logits = model.forward([3, 4])[-1]
    probs = processed_probabilities(logits, [3, 4], [], temperature=1.3, top_k=20)
    draws = gpt2gen.generate([[3, 4]] * 4000, params, 4, 1, temperature=1.3, top_k=20,
                             seed=list(range(4000)))
    counts = np.bincount([d[0] for d in draws], minlength=len(probs)) / 4000
    assert np.abs(counts - probs).max() < 0.03
    assert set(np.nonzero(counts)[0]) <= set(np.nonzero(probs)[0])


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.5, 1e30, np.inf, -np.inf, np.nan]),
                       min_size=1, max_size=80),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_greedy_choice_is_numpys_argmax(values, dtype):
    """Greedy decoding picks np.argmax of the scores (ties to the lowest id, the first NaN
    winning), both straight from the logits and through the processed scores (a zero bias)."""
    logits = np.array(values, dtype)
    want = int(np.argmax(logits))
    for sampling in ({}, {"logit_bias": {len(values) - 1: 0.0}}):
        options = generation_options(0, **sampling)
        assert _testing.choose_token(logits, [], [], options) == want


# --- batching --------------------------------------------------------------------------------


def test_batch_equals_each_prompt_alone(params):
    prompts = [[1], [2, 3, 4, 5, 6, 7, 8], [9, 10, 11]]
    for options in ({}, dict(seed=99, **SAMPLED)):
        batch = gpt2gen.generate(prompts, params, 4, 40, **options)
        assert batch == [gpt2gen.generate(p, params, 4, 40, **options) for p in prompts]


def test_batched_logprobs_are_bit_identical_to_alone(params):
    # Greedy log-probabilities are log_softmax of the logits themselves: equal bit for bit only if
    # the logits are.
    model = _core.Model(params, 4)
    prompts = [[1, 2], [3, 4, 5, 6, 7], [8]]
    together = engine_requests.run(model, prompts, 20, logprobs=50)
    alone = [engine_requests.run(model, [p], 20, logprobs=50)[0] for p in prompts]
    assert together == alone
    assert all(len(tokens) == 20 and len(logprobs) == 20 for tokens, logprobs, _ in together)


def test_each_sequence_stops_on_its_own(params):
    prompts = [[1, 2], [3, 4, 5]]
    free = gpt2gen.generate(prompts, params, 4, 30)
    eos = free[0][4]  # the first sequence produces this id at step 5
    stopped = gpt2gen.generate(prompts, params, 4, 30, eos_token_id=eos)
    assert stopped[0] == free[0][: free[0].index(eos) + 1]
    assert stopped[1] == free[1][: free[1].index(eos) + 1] if eos in free[1] else stopped[1] == free[1]


def test_batch_on_token_can_stop_one_sequence(params):
    seen = []

    def on_token(i, token):
        seen.append((i, token))
        return not (i == 0 and sum(1 for j, _ in seen if j == 0) >= 3)

    out = gpt2gen.generate([[1], [2]], params, 4, 10, on_token=on_token)
    assert len(out[0]) == 3 and len(out[1]) == 10
    assert [t for i, t in seen if i == 1] == out[1]


def test_numpy_2d_batch(params):
    prompts = np.array([[1, 2, 3], [4, 5, 6]])
    assert gpt2gen.generate(prompts, params, 4, 5) == [gpt2gen.generate(list(p), params, 4, 5) for p in prompts]


# --- finish reasons, log-probabilities, scoring --------------------------------------------


def test_finish_reasons_and_logprobs(params):
    model = _core.Model(params, 4)
    free = gpt2gen.generate([1, 2], params, 4, 12)
    prompts = [[1, 2], [40, 41]]
    results = engine_requests.run(model, prompts, 12, seeds=[5, 5], eos_token_id=free[3], logprobs=5,
                                  temperature=0.7)
    assert {finish for _, _, finish in results} <= {"eos", "length"}
    for prompt, (tokens, logprobs, _) in zip(prompts, results):
        assert [t for t, _, _ in logprobs] == tokens
        context = list(prompt)
        for token, logprob, top in logprobs:
            logits = model.forward(context)[-1]
            expected = log_softmax(logits.astype(np.float64) / 0.7)  # after temperature
            assert logprob == pytest.approx(expected[token], abs=1e-6)
            assert [t for t, _ in top] == list(np.argsort(-expected, kind="stable")[:5])
            np.testing.assert_allclose([lp for _, lp in top], np.sort(expected)[::-1][:5], atol=1e-6)
            context.append(token)


def test_score_matches_reference(params):
    ids = [5, 17, 3, 99, 150, 2]
    logits = reference.gpt2(np.array(ids), **params, n_head=4)
    expected = [log_softmax(logits[i])[ids[i + 1]] for i in range(len(ids) - 1)]
    np.testing.assert_allclose(_core.Model(params, 4).score(ids), expected, atol=1e-5)


# --- the sliding context -----------------------------------------------------------------------


def test_sliding_context_recomputes_from_the_kept_half():
    n_ctx = 16
    params = random_params(np.random.default_rng(3), n_layer=2, n_embd=16, n_head=2, n_vocab=60,
                           n_ctx=n_ctx, scale=0.5)
    prompt = list(range(1, 11))
    with pytest.raises(ValueError, match="exceed n_ctx = 16"):
        gpt2gen.generate(prompt, params, 2, 30)
    out = gpt2gen.generate(prompt, params, 2, 30, context_overflow="slide")
    # Simulate: the window grows to n_ctx, then keeps its newest n_ctx / 2 tokens.
    window, expected = list(prompt), []
    for _ in range(30):
        if len(window) > n_ctx:
            window = window[-(n_ctx // 2):]
        token = int(np.argmax(reference.gpt2(np.array(window), **params, n_head=2)[-1]))
        expected.append(token)
        window.append(token)
    assert out == expected
    long_prompt = list(range(40))  # longer than n_ctx: its last n_ctx tokens are the context
    assert gpt2gen.generate(long_prompt, params, 2, 3, context_overflow="slide")[0] == int(
        np.argmax(reference.gpt2(np.array(long_prompt[-n_ctx:]), **params, n_head=2)[-1]))


# --- cancellation and bad arguments --------------------------------------------------------------


def test_cancel_from_another_thread():
    params = random_params(np.random.default_rng(4), n_layer=4, n_embd=64, n_head=4, n_vocab=500,
                           n_ctx=1024)
    token = gpt2gen.CancelToken()
    produced = []

    def on_token(t):  # at the 10th token another thread cancels; the loop checks every step
        produced.append(t)
        if len(produced) == 10:
            canceller = threading.Thread(target=token.cancel)
            canceller.start()
            canceller.join()

    out = gpt2gen.generate([1], params, 4, 1000, cancel=token, on_token=on_token)
    assert token.cancelled and out == produced and len(out) == 10
    assert len(gpt2gen.generate([1], params, 4, 5)) == 5  # the model stays usable


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(temperature=-1), ValueError, "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature="hot"), TypeError, "temperature must be a number"),
    (dict(top_k=-3), ValueError, "top_k must be >= 0"),
    (dict(top_k=2.5), TypeError, "top_k must be an int"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(min_p=-0.1), ValueError, r"min_p must be in \[0, 1\]"),
    (dict(repetition_penalty=0), ValueError, "repetition_penalty must be a finite number > 0"),
    (dict(presence_penalty=3), ValueError, r"presence_penalty must be in \[-2, 2\]"),
    (dict(frequency_penalty=None), TypeError, "frequency_penalty must be a number"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(seed="x"), TypeError, "seed must be an int"),
    (dict(seed=[1, 2, 3]), ValueError, "one value or one per prompt"),
    (dict(eos_token_id=500), ValueError, "eos_token_id 500 is not a token id"),
    (dict(eos_token_id=1.5), TypeError, "eos_token_id must be an int"),
    (dict(context_overflow="wrap"), ValueError, "context_overflow must be 'error' or 'slide'"),
    (dict(cancel=True), TypeError, "CancelToken"),
])
def test_bad_generation_arguments(params, kwargs, error, message):
    with pytest.raises(error, match=message):
        gpt2gen.generate([[1], [2]], params, 4, 3, **kwargs)


def test_huge_requests_fail_before_allocating(params):
    with pytest.raises(ValueError, match="would need .* GiB"):
        gpt2gen.generate([[1]] * 2_000_000, params, 4, 90, context_overflow="slide")
