"""gpt2gen.batch_rows: the per-row work shared by `gpt2gen batch` and the Ray Data processor.

Every row must equal GPT2.generate (or GPT2.score) called alone with that row's settings, bit for
bit, however the rows of a batch are grouped into engine batches; a bad row must get its own
error without disturbing the others.
"""

import math
import subprocess
import sys

import pytest

from batch_reference import PROMPTS, VARIED_SAMPLING_PARAMS, expected_generation, expected_score
from conftest import make_numpy_gpt2
from gpt2gen import GPT2
from gpt2gen.batch_rows import RowError, RowRunner, generate_options


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model_dir, _ = make_numpy_gpt2(
        tmp_path_factory.mktemp("rows"),
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=301,
        n_positions=64,
        seed=5,
    )
    return GPT2.from_pretrained(model_dir)


def test_every_row_equals_generate_with_its_own_settings(model):
    defaults = {"max_tokens": 12, "temperature": 0.5, "seed": 99}
    prompts = PROMPTS * 2  # the same settings twice: rows with equal settings share an engine batch
    params = VARIED_SAMPLING_PARAMS * 2
    rows = RowRunner(model, defaults).run(prompts, params)
    assert len(rows) == len(prompts)
    for prompt, p, row in zip(prompts, params, rows):
        assert row == expected_generation(model, prompt, p, defaults), (prompt, p)
    assert any(row["logprobs"] for row in rows) and any(
        row["finish_reason"] == "stop" for row in rows
    )


def test_openai_defaults_apply_to_what_is_not_set(model):
    (row,) = RowRunner(model).run(["hello"], [{"seed": 3}])
    assert row == expected_generation(
        model, "hello", {"seed": 3, "temperature": 1.0, "max_tokens": 16}
    )
    assert row["num_generated_tokens"] == 16 or row["finish_reason"] == "stop"


def test_null_values_mean_not_set(model):
    """Ray Data gives a row nulls for the keys other rows have and it lacks."""
    with_nulls = {"temperature": 0.0, "seed": None, "stop": None, "top_p": None, "max_tokens": 7}
    (row,) = RowRunner(model).run(["the cat"], [with_nulls])
    assert row == expected_generation(model, "the cat", {"temperature": 0.0, "max_tokens": 7})


def test_unseeded_rows_are_sampled_independently(model):
    rows = RowRunner(model, {"temperature": 1.0, "max_tokens": 24, "ignore_eos": True}).run(
        ["same prompt"] * 4
    )
    # Four draws of 24 tokens from a random 301-token model: equal ones would mean a shared seed.
    assert len({tuple(r["generated_token_ids"]) for r in rows}) == 4


def test_token_id_prompts(model):
    text = "the cat sat"
    ids = model.encode(text)
    runner = RowRunner(model, {"temperature": 0.0, "max_tokens": 8})
    by_text, by_ids, by_tuple, bad, out_of_range, not_ids = runner.run(
        [text, ids, tuple(ids), _non_canonical(model), [10**6], {"a": 1}]
    )
    assert (
        by_ids
        == by_text
        == by_tuple
        == expected_generation(model, text, {"temperature": 0.0, "max_tokens": 8})
    )
    assert "not the tokenizer's encoding" in bad["error"] and bad["generated_text"] is None
    assert "not in the vocabulary" in out_of_range["error"]
    assert "prompt must be a string or a list of token ids" in not_ids["error"]


def _non_canonical(model):
    """Ids the tokenizer would never produce for their text: the letters of a merged pair."""
    merged = model.encode(" the")
    assert len(merged) < len(" the")  # the vocabulary merges it
    return [model.encode(c)[0] for c in " the"]


def test_a_bad_row_gets_an_error_and_the_others_their_output(model):
    prompts = ["hello", "x " * 60, "world", "abc", "def", "ghi", "jkl", "", "mno", "pqr"]
    params = [
        None,
        {"max_tokens": 10},
        None,
        {"temperature": "hot"},
        {"n": 2},
        {"best": 1},
        {"stop": 5},
        None,
        {"top_p": {"a": 1}},
        {"top_k": [1]},
    ]
    defaults = {"temperature": 0.0, "max_tokens": 10}
    rows = RowRunner(model, defaults).run(prompts, params)
    assert rows[0] == expected_generation(model, "hello", None, defaults)
    assert rows[2] == expected_generation(model, "world", None, defaults)
    errors = [row["error"] for row in rows]
    assert "n_ctx" in errors[1]
    assert "temperature must be a number" in errors[3]
    assert "sampling_params.n must be 1" in errors[4]
    assert "unknown parameter 'best'" in errors[5]
    assert "sampling_params.stop must be a string or a list of strings" in errors[6]
    assert "empty" in errors[7]
    assert "top_p must be a number, got dict" in errors[8]
    assert "top_k must be an int, got list" in errors[9]
    for row in rows[1:2] + rows[3:]:
        assert row["generated_text"] is None and row["num_generated_tokens"] is None


def test_a_bad_row_inside_an_engine_batch_does_not_fail_the_batch(model):
    """Same settings, so one engine batch; the long prompt makes the batch call fail, and each row
    is then run alone."""
    prompts = ["one", "two", "y " * 60, "three"]
    rows = RowRunner(model, {"temperature": 0.0, "max_tokens": 5}).run(prompts)
    for i in (0, 1, 3):
        assert rows[i] == expected_generation(
            model, prompts[i], {"temperature": 0.0, "max_tokens": 5}
        )
    assert "n_ctx" in rows[2]["error"]


def test_fail_fast_raises_naming_the_row(model):
    runner = RowRunner(model, {"temperature": 0.0, "max_tokens": 5}, fail_fast=True)
    with pytest.raises(RowError, match=r"row 1 of the batch \(prompt 'z z z.*n_ctx"):
        runner.run(["fine", "z " * 60])
    (row,) = runner.run(["fine"])
    assert "error" not in row


def test_scoring_equals_score(model):
    prompts = ["the quick brown fox", model.encode("jumps over the lazy dog"), "hello world"]
    rows = RowRunner(model, task="score").run(prompts)
    for prompt, row in zip(prompts, rows):
        assert row == expected_score(model, prompt)
        assert (
            row["prompt_logprobs"][0] is None
            and len(row["prompt_logprobs"]) == row["num_input_tokens"]
        )
    one, empty, with_params = RowRunner(model, task="score").run(
        ["a", "", "abc"], [None, None, {"seed": 1}]
    )
    assert one["prompt_logprobs"] == [None] and math.isnan(one["perplexity"])
    assert "empty" in empty["error"]
    assert "sampling_params do not apply when scoring" in with_params["error"]


@pytest.mark.parametrize(
    "defaults, task, message",
    [
        ({"max_tokens": -1}, "generate", "max_tokens must be >= 0"),
        ({"max_tokens": 1.5}, "generate", "max_tokens must be an int"),
        ({"temprature": 1}, "generate", "unknown parameter 'temprature'"),
        ("greedy", "generate", "must be an object"),
        ({"stop": [1]}, "generate", "stop must be a string or a list of strings"),
        ({"ignore_eos": "yes"}, "generate", "ignore_eos must be true or false"),
        ({"temperature": 0}, "score", "do not apply to task='score'"),
        ({}, "translate", "task must be one of generate, score"),
    ],
)
def test_bad_job_settings_fail_at_once(model, defaults, task, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RowRunner(model, defaults, task=task)


def test_generate_options_maps_openai_names():
    options = generate_options(
        {"max_tokens": 3, "stop": "x", "top_k": -1, "seed": None}, {"temperature": 0.2, "seed": 4}
    )
    assert options == {
        "max_new_tokens": 3,
        "temperature": 0.2,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "seed": 4,
        "stop_strings": ["x"],
        "logprobs": None,
        "ignore_eos": False,
    }


def test_importing_gpt2gen_and_the_batch_command_never_imports_ray():
    code = (
        "import sys, gpt2gen, gpt2gen.batch_rows, gpt2gen.batch_files, gpt2gen.batch_cli, gpt2gen.cli; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
