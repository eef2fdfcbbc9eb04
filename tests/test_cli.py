"""The ``gpt2gen`` command line, run as a subprocess as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import gpt2gen
from conftest import make_numpy_gpt2
from gpt2gen import GPT2


def cli(*args, stdin: bytes | str | None = None, stdout=subprocess.PIPE):
    """``python -m gpt2gen.cli ARGS`` offline; arguments may be bytes (not valid UTF-8)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8")
    result = subprocess.run([sys.executable, "-m", "gpt2gen.cli", *args], stdout=stdout,
                            stderr=subprocess.PIPE, input=stdin, env=env, timeout=120)
    result.stdout = (result.stdout or b"").decode("utf-8")
    result.stderr = result.stderr.decode("utf-8")
    return result


def one_error_line(result) -> str:
    """The failure's single stderr line (the exit status is 1)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt2gen: error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random checkpoint with a byte-level vocabulary: BPE sees every byte of the prompt."""
    model_dir, _ = make_numpy_gpt2(tmp_path_factory.mktemp("cli"), n_layer=1, n_embd=16, n_head=2,
                                   vocab_size=300, n_positions=64, seed=5)
    return model_dir


def test_cli_runs_the_exercise():
    result = cli("hello", "-n", "5")
    assert result.returncode == 0 and result.stdout == gpt2gen.gen_text("hello", 5) + "\n"


def test_cli_with_a_model_directory(model_dir):
    local = GPT2.from_pretrained(model_dir)
    expected = local.generate("once upon", 20, temperature=0.9, top_k=40, seed=3).text
    result = cli("--model", str(model_dir), "once upon", "-n", "20", "--temperature", "0.9",
                 "--top-k", "40", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    scored = cli("--model", str(model_dir), "--score", "abc")
    assert scored.returncode == 0 and "perplexity" in scored.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/dir", "x"], "neither an existing directory nor a known model name"),
    (["--model", "gpt2", "x"], "could not download 'gpt2'"),
    (["hello", "-n", "5000"], "exceed the model's context of 1024"),
    (["hello", "--top-p", "2"], "top_p must be in"),
    (["hello", "--threads", "0"], "--threads must be >= 1"),
    (["hello", "-n", "-1"], "-n must be >= 0"),
    (["hello", "--kv-cache-dtype", "bf16"], "--kv-cache-dtype needs --model"),
])
def test_cli_errors_are_one_line(args, message):
    assert message in one_error_line(cli(*args))


def test_cli_with_a_bf16_kv_cache(model_dir):
    expected = GPT2.from_pretrained(model_dir, kv_cache_dtype="bf16").generate("once upon", 20).text
    result = cli("--model", str(model_dir), "--kv-cache-dtype", "bf16", "once upon", "-n", "20")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    bad = cli("--model", str(model_dir), "--kv-cache-dtype", "float16", "x")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_cli_help():
    result = cli("--help")
    assert result.returncode == 0 and "--temperature" in result.stdout and "examples:" in result.stdout


def test_cli_help_says_what_to_do_on_a_busy_machine():
    help_text = " ".join(cli("--help").stdout.split())
    assert "busy" in help_text and "--threads 1" in help_text


def test_cli_reads_the_prompt_from_stdin():
    result = cli("-n", "3", stdin="hello world")
    assert result.returncode == 0 and result.stdout == gpt2gen.gen_text("hello world", 3) + "\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_stdin_drops_the_one_newline_a_shell_adds(model_dir, newline):
    args = ["--model", str(model_dir), "--echo", "-n", "8"]
    from_argument = cli(*args, "once upon")
    assert from_argument.returncode == 0, from_argument.stderr
    assert cli(*args, stdin="once upon" + newline).stdout == from_argument.stdout  # `echo ... |`
    # Only that one: a text that ends with a blank line keeps the blank line.
    assert cli(*args, stdin="once upon\n\n").stdout == cli(*args, "once upon\n").stdout


def test_a_prompt_that_is_not_utf8_is_named(model_dir):
    line = one_error_line(cli("--model", str(model_dir), b"ab\xffcd", "-n", "3"))
    assert line == ("gpt2gen: error: the prompt is not valid UTF-8 "
                    "(invalid start byte: byte 0xff at offset 2)")
    line = one_error_line(cli("--model", str(model_dir), "-n", "3", stdin=b"abc\xe2\x82"))
    assert line == ("gpt2gen: error: standard input is not valid UTF-8 "
                    "(unexpected end of data: byte 0xe2 at offset 3)")


def test_a_reader_that_goes_away_ends_the_command_quietly():
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        result = cli("hello", "-n", "50", stdout=write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


def test_too_many_tokens_name_the_sliding_window(model_dir):
    line = one_error_line(cli("--model", str(model_dir), "once upon", "-n", "100"))
    assert "--context-overflow slide" in line and "the model's context of 64" in line
    slid = cli("--model", str(model_dir), "once upon", "-n", "100", "--context-overflow", "slide")
    assert slid.returncode == 0, slid.stderr


@pytest.mark.parametrize("models_dir", [False, True])
def test_the_offline_download_message_is_short_and_in_the_cli_s_words(tmp_path, models_dir):
    pytest.importorskip("huggingface_hub")
    extra = ["--models-dir", str(tmp_path)] if models_dir else []
    line = one_error_line(cli("--model", "gpt2", *extra, "x"))
    assert len(line.replace(str(tmp_path), "DIR")) < 360, line  # it was 696
    assert "https://huggingface.co/openai-community/gpt2" in line and "--model FOLDER" in line
    assert "config.json, model.safetensors, vocab.json, merges.txt" in line
    assert "models_dir" not in line and "load_pretrained" not in line
    assert (f"put them in {tmp_path / 'gpt2'}, which --models-dir uses" in line) == models_dir


def test_the_pickle_refusal_names_the_option(model_dir, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        (pickled / name).write_bytes((model_dir / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"")
    line = one_error_line(cli("--model", str(pickled), "x"))
    assert "--allow-pickle" in line and "allow_pickle" not in line and "arbitrary code" in line
    pytest.importorskip("torch")
    line = one_error_line(cli("--model", str(pickled), "--allow-pickle", "x"))
    assert line.endswith("torch.load(weights_only=True) failed: EOFError: the file ends too early "
                         "(it is empty or truncated)"), line


@pytest.mark.parametrize("text, what", [("a", "'a' is a single token"), ("", "the text is empty")])
def test_score_needs_two_tokens(model_dir, text, what):
    result = cli("--model", str(model_dir), "--score", text)
    line = one_error_line(result)
    assert "--score needs a text of at least two tokens" in line and what in line
    assert "generation" not in line and result.stdout == ""


def test_a_model_file_points_to_its_folder(model_dir):
    line = one_error_line(cli("--model", str(model_dir / "model.safetensors"), "x"))
    assert f"pass the directory that holds it ({model_dir})" in line
