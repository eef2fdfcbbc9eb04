"""`gpt2gen batch` in-process: JSON Lines and OpenAI batch files in, results in input order out,
each equal to GPT2.generate with that line's settings; resuming after a killed run; bad input.
(The same command on Ray: tests/test_ray.py.)"""

import json
import signal
import subprocess
import sys
import time

import pytest

from batch_reference import PROMPTS, VARIED_SAMPLING_PARAMS, expected_generation, expected_score
from conftest import make_numpy_gpt2
from gpt2gen import GPT2
from gpt2gen.cli import main
from isolated import isolated_env

OUTPUT_FIELDS = (
    "generated_text",
    "generated_token_ids",
    "num_generated_tokens",
    "num_input_tokens",
    "finish_reason",
    "logprobs",
    "error",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model_dir, _ = make_numpy_gpt2(
        tmp_path_factory.mktemp("batch_cli"),
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=301,
        n_positions=64,
        seed=7,
    )
    return model_dir


@pytest.fixture(scope="module")
def model(model_dir):
    return GPT2.from_pretrained(model_dir)


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_batch(capsys, *args):
    code = main(["batch", "--no-progress", *map(str, args)])
    return code, capsys.readouterr().err


def plain_requests():
    records = []
    for i, (prompt, params) in enumerate(zip(PROMPTS, VARIED_SAMPLING_PARAMS)):
        record = {"prompt": prompt, "id": i, "meta": {"source": "test", "tags": [i]}}
        if params is not None:
            record["sampling_params"] = params
        records.append(record)
    records.append({"prompt": [5, 6, 7], "id": "ids"})  # token ids
    return records


def test_plain_lines_in_input_order_each_equal_to_generate(tmp_path, model_dir, model, capsys):
    records = plain_requests()
    src = write_lines(tmp_path / "in.jsonl", records)
    with open(src, "a") as f:
        f.write("\n   \n")  # blank lines are skipped
    code, err = run_batch(
        capsys,
        "--model",
        model_dir,
        "--input",
        src,
        "--output",
        tmp_path / "out.jsonl",
        "--batch-size",
        4,
        "--concurrency",
        2,
        "--max-tokens",
        10,
        "--seed",
        5,
    )
    assert code == 0, err
    assert f"wrote {len(records)} lines" in err
    out = read_lines(tmp_path / "out.jsonl")
    assert len(out) == len(records)
    defaults = {"max_tokens": 10, "seed": 5}
    for record, line in zip(records, out):
        assert {k: line[k] for k in record} == record  # the input line, unchanged
        assert list(line)[: len(record)] == list(record)
        expected = expected_generation(
            model, record["prompt"], record.get("sampling_params"), defaults
        )
        assert {k: line[k] for k in OUTPUT_FIELDS} == expected


def test_packed_weights_and_a_bf16_cache_as_the_same_model_would(tmp_path, model_dir, model, capsys):
    records = plain_requests()
    src = write_lines(tmp_path / "in.jsonl", records)
    args = ["--model", model_dir, "--input", src, "--max-tokens", 8, "--seed", 3]
    code, err = run_batch(capsys, *args, "--output", tmp_path / "out.jsonl", "--dtype", "int8",
                          "--kv-cache-dtype", "bf16")
    assert code == 0, err
    packed = GPT2.from_pretrained(model_dir, dtype="int8", kv_cache_dtype="bf16")
    defaults = {"max_tokens": 8, "seed": 3}
    out = read_lines(tmp_path / "out.jsonl")
    expected = [expected_generation(packed, r["prompt"], r.get("sampling_params"), defaults)
                for r in records]
    assert [{k: line[k] for k in OUTPUT_FIELDS} for line in out] == expected
    float32 = [expected_generation(model, r["prompt"], r.get("sampling_params"), defaults)
               for r in records]
    assert expected != float32  # the options reached the model: its log-probabilities differ


def openai_line(custom_id, body, url="/v1/completions", method="POST"):
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}


def test_openai_batch_format(tmp_path, model_dir, model, capsys):
    lines = [
        openai_line("a", {"model": "gpt2", "prompt": "the cat", "max_tokens": 7, "seed": 1}),
        openai_line(
            "b",
            {
                "prompt": "hello",
                "temperature": 0,
                "max_tokens": 5,
                "logprobs": 2,
                "stop": ["\n"],
                "user": "u1",
                "stream": False,
                "echo": False,
                "n": 1,
                "best_of": 1,
                "logit_bias": {},
            },
        ),
        openai_line("c", {"prompt": "x"}, url="/v1/chat/completions"),
        openai_line("d", {"prompt": "x", "stream": True}),
        openai_line("e", {"prompt": ["one", "two"]}),
        openai_line("f", {"prompt": "x " * 60, "max_tokens": 10}),
        openai_line("g", {"prompt": "x", "frobnicate": 1}),
        openai_line("h", {"prompt": model.encode("a b c"), "temperature": 0.0}),
    ]
    src = write_lines(tmp_path / "batch.jsonl", lines)
    code, err = run_batch(
        capsys, "--model", model_dir, "--input", src, "--output", tmp_path / "out.jsonl"
    )
    assert code == 0, err
    out = read_lines(tmp_path / "out.jsonl")
    assert [o["custom_id"] for o in out] == list("abcdefgh")
    assert all(o["error"] is None and o["id"].startswith("batch_req_") for o in out)

    def completion(o):
        assert o["response"]["status_code"] == 200
        body = o["response"]["body"]
        assert body["object"] == "text_completion" and isinstance(body["created"], int)
        assert body["id"].startswith("cmpl-") and len(body["choices"]) == 1
        return body

    a = completion(out[0])
    ref = expected_generation(
        model, "the cat", {"max_tokens": 7, "seed": 1}
    )  # OpenAI's temperature 1
    assert a["model"] == "gpt2"
    assert a["choices"][0] == {
        "index": 0,
        "text": ref["generated_text"],
        "finish_reason": ref["finish_reason"],
        "logprobs": None,
    }
    assert a["usage"] == {
        "prompt_tokens": ref["num_input_tokens"],
        "completion_tokens": ref["num_generated_tokens"],
        "total_tokens": ref["num_input_tokens"] + ref["num_generated_tokens"],
    }
    b = completion(out[1])
    ref = expected_generation(
        model, "hello", {"temperature": 0, "max_tokens": 5, "logprobs": 2, "stop": ["\n"]}
    )
    assert b["model"] == str(model_dir)  # no model in the body: the one that ran
    lp = b["choices"][0]["logprobs"]
    assert lp["tokens"] == [t["token"] for t in ref["logprobs"]]
    assert lp["token_logprobs"] == [t["logprob"] for t in ref["logprobs"]]
    assert lp["top_logprobs"] == [
        {a["token"]: a["logprob"] for a in t["top_logprobs"]} for t in ref["logprobs"]
    ]
    offsets = [
        sum(len(t["token"]) for t in ref["logprobs"][:i]) for i in range(len(ref["logprobs"]))
    ]
    assert lp["text_offset"] == offsets
    h = completion(out[7])
    assert (
        h["choices"][0]["text"]
        == expected_generation(model, "a b c", {"temperature": 0.0})["generated_text"]
    )

    messages = {o["custom_id"]: o["response"]["body"]["error"]["message"] for o in out[2:7]}
    for o in out[2:7]:
        assert o["response"]["status_code"] == 400
        assert o["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert "only POST /v1/completions" in messages["c"]
    assert "stream=true is not supported" in messages["d"]
    assert "a list of prompts" in messages["e"]
    assert "n_ctx" in messages["f"]
    assert "unknown field 'frobnicate'" in messages["g"]


def test_scoring(tmp_path, model_dir, model, capsys):
    records = [
        {"prompt": "the quick brown fox"},
        {"prompt": model.encode("hello world"), "k": 1},
        {"prompt": "a"},
    ]
    src = write_lines(tmp_path / "in.jsonl", records)
    code, err = run_batch(
        capsys, "--model", model_dir, "--input", src, "--output", tmp_path / "out.jsonl", "--score"
    )
    assert code == 0, err
    out = read_lines(tmp_path / "out.jsonl")
    for record, line in zip(records[:2], out):
        expected = expected_score(model, record["prompt"])
        assert {**record, **expected} == line
    assert out[2]["perplexity"] is None  # one token: nothing scored, NaN written as null
    code, err = run_batch(
        capsys,
        "--model",
        model_dir,
        "--input",
        src,
        "--output",
        tmp_path / "o2.jsonl",
        "--score",
        "--temperature",
        "0",
    )
    assert code == 1 and "--score takes no sampling flags" in err


# --- resuming ---------------------------------------------------------------------------------


def kill_test_requests(n):
    return [
        {
            "prompt": f"row {i} of the file",
            "n": i,
            "sampling_params": {"temperature": 0.8, "seed": i}
            if i % 3 == 0
            else {"max_tokens": 4 + i % 7},
        }
        for i in range(n)
    ]


def test_resume_after_a_killed_run_gives_the_uninterrupted_file(tmp_path, model_dir, capsys):
    n = 90
    src = write_lines(tmp_path / "in.jsonl", kill_test_requests(n))
    common = [
        "--model",
        model_dir,
        "--input",
        src,
        "--batch-size",
        2,
        "--max-tokens",
        24,
        "--temperature",
        0,
        "--ignore-eos",
    ]
    code, err = run_batch(capsys, *common, "--output", tmp_path / "reference.jsonl")
    assert code == 0, err

    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "gpt2gen.cli",
        "batch",
        "--no-progress",
        *map(str, common),
        "--output",
        str(out),
    ]
    process = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=isolated_env()
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    before = out.read_bytes().count(b"\n")
    assert 3 <= before < n

    code, err = run_batch(capsys, *common, "--output", out)
    assert code == 0, err
    assert f"wrote {n - before} lines" in err
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()
    code, err = run_batch(capsys, *common, "--output", out)  # nothing left: nothing written
    assert code == 0 and "already in" in err, err
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


def test_resume_removes_a_cut_line_and_refuses_a_foreign_output(tmp_path, model_dir, capsys):
    src = write_lines(tmp_path / "in.jsonl", kill_test_requests(7))
    common = ["--model", model_dir, "--input", src, "--temperature", 0, "--max-tokens", 6]
    code, _ = run_batch(capsys, *common, "--output", tmp_path / "reference.jsonl")
    assert code == 0
    reference = (tmp_path / "reference.jsonl").read_bytes()
    lines = reference.splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(lines[:3]) + lines[3][:25])  # cut inside the fourth line
    code, err = run_batch(capsys, *common, "--output", out)
    assert code == 0 and "wrote 4 lines" in err
    assert out.read_bytes() == reference

    other = write_lines(tmp_path / "other.jsonl", [{"prompt": "something else"}] * 7)
    code, err = run_batch(capsys, "--model", model_dir, "--input", other, "--output", out)
    assert code == 1 and f"{out}:1 does not answer {other}:1" in err
    assert out.read_bytes() == reference  # untouched
    short = write_lines(tmp_path / "short.jsonl", kill_test_requests(7)[:2])
    code, err = run_batch(capsys, "--model", model_dir, "--input", short, "--output", out)
    assert code == 1 and "has more lines than" in err


# --- failures -----------------------------------------------------------------------------------


def test_fail_fast_stops_at_the_first_failing_line(tmp_path, model_dir, capsys):
    records = [
        {"prompt": "fine"},
        {"prompt": "also fine"},
        {"prompt": "x " * 60},
        {"prompt": "never run"},
    ]
    src = write_lines(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    code, err = run_batch(
        capsys,
        "--model",
        model_dir,
        "--input",
        src,
        "--output",
        out,
        "--fail-fast",
        "--temperature",
        0,
        "--max-tokens",
        10,
        "--batch-size",
        1,
    )
    assert code == 1
    assert err.count("\n") == 1 and f"{src}:3:" in err and "n_ctx" in err
    assert [line["prompt"] for line in read_lines(out)] == ["fine", "also fine"]


@pytest.mark.parametrize(
    "content, args, message",
    [
        ('{"prompt": "a"}\nnot json\n', [], "in.jsonl:2: not a JSON line"),
        ('["a list"]\n', [], "in.jsonl:1: expected a JSON object"),
        (
            '{"custom_id": "a", "body": {}}\n{"body": {}}\n',
            [],
            "in.jsonl:2: an OpenAI batch line needs a string 'custom_id'",
        ),
        ('{"custom_id": "a", "body": {"prompt": "x"}}\n', ["--score"], "--score takes plain lines"),
        ('{"prompt": "a"}\n', ["--batch-size", "0"], "--batch-size must be >= 1"),
        ('{"prompt": "a"}\n', ["--concurrency", "-1"], "--concurrency must be >= 1"),
        ('{"prompt": "a"}\n', ["--max-tokens", "-2"], "max_tokens must be >= 0"),
        (
            '{"prompt": "a"}\n',
            ["--model", "/nonexistent/model"],
            "neither an existing directory nor a known model",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr(tmp_path, model_dir, capsys, content, args, message):
    src = tmp_path / "in.jsonl"
    src.write_text(content, encoding="utf-8")
    model_args = [] if "--model" in args else ["--model", model_dir]
    code, err = run_batch(
        capsys, *model_args, "--input", src, "--output", tmp_path / "out.jsonl", *args
    )
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("gpt2gen batch: error: ") and message in err, err
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_text() == ""


def test_missing_input_and_help(tmp_path, model_dir, capsys):
    code, err = run_batch(
        capsys, "--model", model_dir, "--input", tmp_path / "nope.jsonl", "--output", tmp_path / "o"
    )
    assert code == 1 and "nope.jsonl: cannot read it" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", "--help"])
    assert exit_info.value.code == 0
    assert "OpenAI's Batch API format" in capsys.readouterr().out


def test_the_command_line_shows_progress(tmp_path, model_dir, model):
    src = write_lines(
        tmp_path / "in.jsonl", [{"prompt": "hello", "sampling_params": {"temperature": 0}}]
    )
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2gen.cli",
            "batch",
            "--model",
            str(model_dir),
            "--input",
            str(src),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=isolated_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "row/s" in result.stderr and "tok/s" in result.stderr  # the progress bar
    (line,) = read_lines(out)
    assert (
        line["generated_text"]
        == expected_generation(model, "hello", {"temperature": 0})["generated_text"]
    )


def test_ray_missing_is_one_line(tmp_path, model_dir):
    src = write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    code = (
        "import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from gpt2gen.cli import main\n"
        f"sys.exit(main(['batch', '--model', {str(model_dir)!r}, '--input', {str(src)!r}, "
        f"'--output', {str(tmp_path / 'out.jsonl')!r}, '--ray', '--no-progress']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=isolated_env(),
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        'gpt2gen batch: error: gpt2gen.ray_data needs Ray Data: pip install "gpt2gen[ray]"'
    )
    assert result.stderr.count("\n") == 1
