"""gpt2gen on Ray: the Ray Data processor and `gpt2gen batch --ray`, on a local cluster
(ray.init(num_cpus=2), one per module: starting Ray takes seconds) with small random checkpoints.

Every row must equal GPT2.generate with that row's settings, wherever it ran; the command must
write the same file with and without --ray, and resume a killed --ray run.
"""

import json
import signal
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need ray[data] (pip install '.[ray]')")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.service  # a local Ray cluster

from batch_reference import PROMPTS, VARIED_SAMPLING_PARAMS, expected_generation, expected_score  # noqa: E402
from conftest import make_numpy_gpt2  # noqa: E402
from gpt2gen import GPT2  # noqa: E402
from gpt2gen.cli import main  # noqa: E402
from gpt2gen.ray_data import GPT2Predictor, ProcessorConfig, build_processor  # noqa: E402
from isolated import isolated_env  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model_dir, _ = make_numpy_gpt2(
        tmp_path_factory.mktemp("ray"),
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=301,
        n_positions=64,
        seed=11,
    )
    return model_dir


@pytest.fixture(scope="module")
def model(model_dir):
    return GPT2.from_pretrained(model_dir)


def python_values(row: dict) -> dict:
    """A row as plain Python values (Ray may hand list columns back as NumPy arrays)."""

    def plain(v):
        if hasattr(v, "tolist"):
            return v.tolist()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in dict(row).items()}


def test_processor_rows_equal_generate(cluster, model_dir, model):
    # One Arrow type per column: a stop string is given as a one-element list here.
    params = [
        None
        if p is None
        else {k: [v] if k == "stop" and isinstance(v, str) else v for k, v in p.items()}
        for p in VARIED_SAMPLING_PARAMS
    ]
    items = [
        {"id": i, "prompt": prompt, "sampling_params": p}
        for i, (prompt, p) in enumerate(zip(PROMPTS * 2, params * 2))
    ]
    defaults = {"max_tokens": 10, "temperature": 0.6, "seed": 3}
    config = ProcessorConfig(
        model_source=model_dir, batch_size=3, concurrency=2, num_threads=1, sampling_params=defaults
    )
    rows = build_processor(config)(ray.data.from_items(items, override_num_blocks=4)).take_all()
    rows = sorted((python_values(r) for r in rows), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(len(items)))
    for item, row in zip(items, rows):
        expected = expected_generation(model, item["prompt"], item["sampling_params"], defaults)
        assert {k: row[k] for k in expected} == expected, item
        assert row["prompt"] == item["prompt"]  # the input columns stay


def test_row_errors_and_fail_fast(cluster, model_dir, model):
    items = [{"prompt": "fine"}, {"prompt": "x " * 60}, {"prompt": "also fine"}]
    config = ProcessorConfig(
        model_source=model_dir, sampling_params={"temperature": 0.0, "max_tokens": 12}
    )
    rows = [
        python_values(r) for r in build_processor(config)(ray.data.from_items(items)).take_all()
    ]
    by_prompt = {r["prompt"]: r for r in rows}
    for prompt in ("fine", "also fine"):
        assert by_prompt[prompt] == {
            "prompt": prompt,
            **expected_generation(model, prompt, {"temperature": 0.0, "max_tokens": 12}),
        }
    failed = by_prompt["x " * 60]
    assert "n_ctx" in failed["error"] and failed["generated_text"] is None

    config = ProcessorConfig(
        model_source=model_dir, sampling_params={"max_tokens": 12}, fail_fast=True
    )
    with pytest.raises(Exception, match=r"row \d of the batch \(prompt 'x x x"):
        build_processor(config)(ray.data.from_items(items)).take_all()


def test_scoring_token_id_prompts_and_the_row_hooks(cluster, model_dir, model):
    texts = ["the quick brown fox", "jumps over", "the lazy dog"]
    items = [{"ids": model.encode(t), "k": i} for i, t in enumerate(texts)]
    config = ProcessorConfig(model_source=model_dir, task="score", batch_size=2)
    processor = build_processor(
        config,
        preprocess=lambda row: {"k": row["k"], "prompt": row["ids"]},
        postprocess=lambda row: {
            "k": row["k"],
            "perplexity": row["perplexity"],
            "logprobs": row["prompt_logprobs"],
        },
    )
    rows = sorted(
        (python_values(r) for r in processor(ray.data.from_items(items)).take_all()),
        key=lambda r: r["k"],
    )
    for text, row in zip(texts, rows):
        expected = expected_score(model, text)
        assert set(row) == {"k", "perplexity", "logprobs"}
        assert (
            row["perplexity"] == expected["perplexity"]
            and row["logprobs"] == expected["prompt_logprobs"]
        )


def test_predictor_maps_the_weights_read_only(model_dir):
    """float32 weights are a read-only mmap of the file: actors on one node share the page cache."""
    predictor = GPT2Predictor(ProcessorConfig(model_source=model_dir))
    wte = predictor.model.params["wte"]
    assert not wte.flags.writeable and not wte.flags.owndata
    mapped = open("/proc/self/maps").read()
    assert str(model_dir / "model.safetensors") in mapped


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(concurrency=(3, 2)), "min <= max"),
        (dict(concurrency="2"), "concurrency must be an int"),
        (dict(num_threads=1.5), "num_threads must be an int"),
        (dict(max_concurrent_batches=0), "max_concurrent_batches must be >= 1"),
        (dict(dtype="fp16"), "dtype must be one of float32, bf16, int8"),
        (dict(kv_cache_dtype="fp16"), "kv_cache_dtype must be 'float32' or 'bf16'"),
        (dict(task="embed"), "task must be one of generate, score"),
        (dict(sampling_params={"max_token": 3}), "unknown parameter 'max_token'"),
        (dict(task="score", sampling_params={"max_tokens": 3}), "do not apply to task='score'"),
        (dict(fail_fast="yes"), "fail_fast must be True or False"),
        (dict(model_source=None), "model_source must be a model name or directory"),
    ],
)
def test_bad_config_is_refused_where_it_is_made(model_dir, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ProcessorConfig(**{"model_source": model_dir, **kwargs})
    with pytest.raises(TypeError, match="a processor maps a ray.data.Dataset"):
        build_processor(ProcessorConfig(model_source=model_dir))([{"prompt": "x"}])


# --- gpt2gen batch --ray -------------------------------------------------------------------------


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def mixed_plain_requests():
    """Lines whose prompts and settings differ in type from one line to the next."""
    records = [
        {"prompt": p, "i": i, "sampling_params": s}
        for i, (p, s) in enumerate(zip(PROMPTS, VARIED_SAMPLING_PARAMS))
    ]
    records += [
        {"prompt": [5, 6, 7, 8], "i": "ids", "extra": {"nested": [1, {"x": None}]}},
        {"prompt": "x " * 60, "sampling_params": {"max_tokens": 30}},
        {"no_prompt": True},
        {"prompt": "q", "sampling_params": {"temperature": "warm"}},
    ]
    return records


def openai_requests():
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": p, **(s or {})},
        }
        for i, (p, s) in enumerate(zip(PROMPTS, VARIED_SAMPLING_PARAMS))
    ]
    lines.append(
        {"custom_id": "bad", "method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}}
    )
    return lines


def without_created(path):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        body = line["response"]["body"]
        assert isinstance(body.get("created", 0), int)
        body.pop("created", None)
    return lines


@pytest.mark.parametrize("requests", [mixed_plain_requests, openai_requests])
def test_command_writes_the_same_file_with_and_without_ray(
    cluster, tmp_path, model_dir, capsys, requests
):
    src = write_lines(tmp_path / "in.jsonl", requests())
    common = [
        "batch",
        "--no-progress",
        "--model",
        str(model_dir),
        "--input",
        str(src),
        "--max-tokens",
        "9",
        "--seed",
        "21",
        "--batch-size",
        "3",
        "--concurrency",
        "2",
    ]
    assert main([*common, "--output", str(tmp_path / "local.jsonl")]) == 0, capsys.readouterr().err
    assert main([*common, "--output", str(tmp_path / "ray.jsonl"), "--ray"]) == 0, (
        capsys.readouterr().err
    )
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert len(local.read_text().splitlines()) == len(requests())
    if requests is mixed_plain_requests:
        assert local.read_bytes() == on_ray.read_bytes()
        errors = [json.loads(line)["error"] for line in local.read_text().splitlines()]
        assert errors.count(None) == len(requests()) - 3
    else:  # the same but for the completions' creation times
        assert without_created(local) == without_created(on_ray)


def test_a_killed_ray_run_resumes_without_duplicates(cluster, tmp_path, model_dir, capsys):
    n = 60
    src = write_lines(tmp_path / "in.jsonl", [{"prompt": f"line {i}", "i": i} for i in range(n)])
    common = [
        "--model",
        str(model_dir),
        "--input",
        str(src),
        "--batch-size",
        "2",
        "--max-tokens",
        "20",
        "--temperature",
        "0.9",
        "--seed",
        "5",
        "--ignore-eos",
    ]
    assert (
        main(["batch", "--no-progress", *common, "--output", str(tmp_path / "reference.jsonl")])
        == 0
    )
    capsys.readouterr()

    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "gpt2gen.cli",
        "batch",
        "--no-progress",
        *common,
        "--output",
        str(out),
        "--ray",
        cluster,
    ]  # the test's cluster, by address, as a remote user would
    process = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=isolated_env()
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    before = out.read_bytes().count(b"\n")
    assert 2 <= before < n

    assert main(["batch", "--no-progress", *common, "--output", str(out), "--ray"]) == 0
    assert f"wrote {n - before} lines" in capsys.readouterr().err
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


def test_a_missing_model_on_the_cluster_is_one_line(cluster, tmp_path, capsys):
    src = write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    code = main(
        [
            "batch",
            "--no-progress",
            "--model",
            str(tmp_path / "nowhere"),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--ray",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"gpt2gen batch: error: '{tmp_path / 'nowhere'}' is neither an existing directory" in err
    assert "Traceback" not in err
