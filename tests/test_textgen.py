"""The high-level GPT2 class (text in, text out, streaming, stop strings, scoring).

The command line is tested in test_cli.py.
"""

import numpy as np
import pytest

import gpt2gen
from conftest import make_numpy_gpt2, write_tokenizer_files
from gpt2gen import GPT2, _core, reference
from gpt2gen.model import _TextAssembler

EOT_TEXT = "<|endoftext|>"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random checkpoint with a byte-level vocabulary (no torch needed)."""
    model_dir, _ = make_numpy_gpt2(tmp_path_factory.mktemp("textgen"), n_layer=2, n_embd=32,
                                   n_head=4, vocab_size=400, n_positions=128, seed=3)
    return GPT2.from_pretrained(model_dir)


def test_generate_text_is_the_decoded_ids(model):
    completion = model.generate("the cat sat on", max_new_tokens=30)
    ids = gpt2gen.generate(model.encode("the cat sat on"), model.params, 4, 30,
                           eos_token_id=model.eos_token_id)
    assert completion.token_ids == ids
    eos = model.eos_token_id
    assert completion.text == model.decode([t for t in ids if t != eos])
    assert completion.finish_reason == ("eos" if ids[-1] == eos else "length")


@pytest.mark.parametrize("options", [
    {}, dict(temperature=1.0, seed=4), dict(temperature=0.7, top_p=0.9, seed=5, ignore_eos=True),
    dict(temperature=1.2, min_p=0.02, seed=6, stop_strings=["e", "\ufffd"]),
])
def test_stream_joins_to_generate(model, options):
    pieces = list(model.stream("hello world", 60, **options))
    assert "".join(pieces) == model.generate("hello world", 60, **options).text
    assert all(pieces)


def test_callback_form_matches_stream(model):
    seen = []
    completion = model.generate("abc", 40, temperature=1.0, seed=9, on_text=seen.append)
    assert "".join(seen) == completion.text == "".join(model.stream("abc", 40, temperature=1.0, seed=9))


def test_pieces_never_split_a_character(tmp_path):
    write_tokenizer_files(tmp_path, 300)  # byte-level: every multi-byte character spans tokens
    tokenizer = gpt2gen.Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    text = "héllo 世界 🎉 naïve e\u0301 ok"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)
    assembler = _TextAssembler(tokenizer, [], [])
    pieces = [assembler.push(t) for t in ids] + [assembler.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # Each non-empty piece ends on a character boundary: the text so far is a prefix of the text.
    joined = ""
    for p in pieces:
        joined += p
        assert text.startswith(joined)


def test_stop_string_spanning_tokens(model):
    options = dict(temperature=1.0, seed=2, ignore_eos=True)
    full = model.generate("once upon a time", 60, **options)
    text, ids = full.text, full.token_ids
    assert text == model.decode(ids)
    # A stop string from the last character of one token's text to the first of the next.
    k = next(k for k in range(1, len(ids))
             if all(p.isascii() and p.isprintable() for p in (model.decode([ids[k - 1]]), model.decode([ids[k]])))
             and len(model.decode([ids[k - 1]])) >= 2 and model.decode([ids[k]]))
    boundary = len(model.decode(ids[:k]))
    stop = text[boundary - 1 : boundary + 1]
    expected = text[: text.find(stop)]
    stopped = model.generate("once upon a time", 60, stop_strings=[stop, "never-there"], **options)
    assert stopped.text == expected and stopped.finish_reason == "stop"
    assert stopped.token_ids == ids[: len(stopped.token_ids)] and len(stopped.token_ids) < len(ids)
    assert "".join(model.stream("once upon a time", 60, stop_strings=stop, **options)) == expected


def test_eos_stops_and_is_not_in_the_text(model):
    free = model.generate("x", 40, ignore_eos=True)
    eos = free.token_ids[5]
    stopped = model.generate("x", 40, eos_token_id=eos)
    assert stopped.token_ids == free.token_ids[: free.token_ids.index(eos) + 1]
    assert stopped.finish_reason == "eos"
    assert stopped.text == model.decode(stopped.token_ids[:-1])


def test_breaking_out_of_a_stream_frees_the_generation(model):
    assert _core.live_sequences() == 0
    endless = dict(ignore_eos=True, context_overflow="slide")  # still running at the break
    for i, _ in enumerate(model.stream("abc", 10**6, **endless)):
        assert _core.live_sequences() == 1
        if i == 3:
            break
    assert _core.live_sequences() == 0


def test_batch_of_prompts_equals_each_alone(model):
    prompts = ["a", "the quick brown fox", "hello"]
    options = dict(temperature=0.8, seed=11, stop_strings=["th"])
    batch = model.generate(prompts, 30, **options)
    assert [c.text for c in batch] == [model.generate(p, 30, **options).text for p in prompts]
    seen = {}
    model.generate(prompts, 30, on_text=lambda i, piece: seen.setdefault(i, []).append(piece), **options)
    assert ["".join(seen.get(i, [])) for i in range(3)] == [c.text for c in batch]


def test_logprobs_and_score(model):
    completion = model.generate("abc", 10, logprobs=3, ignore_eos=True)
    assert [lp.token for lp in completion.logprobs] == completion.token_ids
    ids = model.encode("abc") + completion.token_ids
    logits = reference.gpt2(np.array(ids), **model.params, n_head=4).astype(np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    n = len(model.encode("abc"))
    for k, lp in enumerate(completion.logprobs):
        assert lp.logprob == pytest.approx(log_probs[n - 1 + k, lp.token], abs=1e-5)
        assert lp.logprob == pytest.approx(lp.top[0][2], abs=1e-9)  # greedy took the best
        assert lp.text == model.decode([lp.token]) and len(lp.top) == 3
    score = model.score(ids)
    np.testing.assert_allclose(score.logprobs, [log_probs[i, ids[i + 1]] for i in range(len(ids) - 1)], atol=1e-5)
    assert score.perplexity == pytest.approx(np.exp(-np.mean(score.logprobs)))
    assert model.score("abc def").token_ids == model.encode("abc def")[1:]


def test_do_sample_and_temperature(model):
    greedy = model.generate("abc", 20).token_ids
    assert model.generate("abc", 20, do_sample=False, temperature=0.9, seed=1).token_ids == greedy
    sampled = model.generate("abc", 20, do_sample=True, seed=1, ignore_eos=True).token_ids
    assert sampled == model.generate("abc", 20, temperature=1.0, seed=1, ignore_eos=True).token_ids


def test_bad_high_level_arguments(model):
    with pytest.raises(TypeError, match="prompt must be a str"):
        model.generate(123)
    with pytest.raises(TypeError, match="prompt must be a str"):
        model.generate([])
    with pytest.raises(TypeError, match="stop_strings"):
        model.generate("a", 5, stop_strings=[1])
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        model.generate("a", 5.0)
    with pytest.raises(ValueError, match="exceed n_ctx = 128"):
        model.generate("a " * 200, 5)
    with pytest.raises(TypeError, match="one prompt"):
        next(model.stream(["a", "b"]))


def test_exercise_model():
    model = GPT2.exercise()
    assert model.generate("hello", 5).text == gpt2gen.gen_text("hello", 5)
    assert "".join(model.stream("hello world", 12)) == gpt2gen.gen_text("hello world", 12)
