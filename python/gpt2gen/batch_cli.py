"""``gpt2gen batch``: complete (or score) a JSON Lines file of prompts, in-process or on Ray.

Formats, resuming and the output fields: ``gpt2gen.batch_files`` and ``gpt2gen.batch_rows``.
In-process, batches of rows run on one model with the engine's batching; with ``--ray`` they
run on a Ray Data actor pool (``gpt2gen.ray_data``), on a local or a remote cluster. Both give
the same lines: the rows are the same ``GPT2.generate`` calls, and the lines are written in
input order whatever order the batches finish in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Optional

from .batch_files import PLAIN, BatchFileError, answered, dumps, output_record, read_requests
from .batch_rows import ERROR_COLUMN, RowRunner, check_job, output_columns
from .packing import FORMATS

EPILOG = """\
input lines (JSON Lines; blank lines are skipped):
  {"prompt": "Once upon a time", "sampling_params": {"max_tokens": 40, "temperature": 0.8, "seed": 1}, "id": 7}
      each output line is the input line plus generated_text, generated_token_ids,
      num_generated_tokens, num_input_tokens, finish_reason, logprobs and error
  {"custom_id": "r1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Hi", "max_tokens": 8}}
      OpenAI's Batch API format: each output line is shaped like OpenAI's batch output

sampling_params take OpenAI's names and defaults (max_tokens 16, temperature 1); the flags below
change the defaults, a line's own values win. Rerunning after an interruption skips the lines
already in --output.

examples:
  gpt2gen batch --model gpt2 --input prompts.jsonl --output out.jsonl --temperature 0
  gpt2gen batch --model ./my-gpt2 --input prompts.jsonl --output out.jsonl --ray --concurrency 2
  RAY_ADDRESS=HEAD:6379 gpt2gen batch --model gpt2 --input in.jsonl --output out.jsonl --ray --concurrency 8
"""


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="gpt2gen batch",
        description="Complete (or score) every prompt of a JSON Lines file, in "
        "input order, in this process or on a Ray cluster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="model name (gpt2 ... gpt2-xl) or directory; with --ray, "
        "a directory must exist at that path on every node",
    )
    p.add_argument("--input", required=True, help="JSON Lines requests")
    p.add_argument("--output", required=True, help="JSON Lines results (appended to when resuming)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray: a new local cluster (or RAY_ADDRESS's), or the cluster at ADDRESS "
        "(host:6379 of a `ray start --head`, or auto)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="rows per engine batch (default: 16)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="with --ray: actors (model copies, default: 1); in-process: batches in flight on "
        "the one model (default: 2, so the next batch's rows fill the places of finished ones)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="engine threads per model copy (default: the cores in-process, 1 per actor with --ray)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", *FORMATS],
        default="float32",
        help="weights as stored (float32, default) or packed once to bf16 / int8 / int4",
    )
    p.add_argument(
        "--kv-cache-dtype",
        choices=["float32", "bf16"],
        default="float32",
        help="keys and values as computed (float32, default) or rounded to bf16 (half the "
        "cache's memory, float32 weights)",
    )
    p.add_argument(
        "--models-dir", help="where downloaded models are kept (default: the Hugging Face cache)"
    )
    p.add_argument(
        "--score",
        action="store_true",
        help="instead of generating, score each prompt: per-token log-probabilities and perplexity",
    )
    p.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first request that fails (default: write its error and go on)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    s = p.add_argument_group("default sampling_params (OpenAI's names; a line's own values win)")
    s.add_argument("--max-tokens", type=int, help="tokens to generate (default: 16)")
    s.add_argument("--temperature", type=float, help="0 = greedy (default: 1)")
    s.add_argument("--top-p", type=float)
    s.add_argument("--top-k", type=int)
    s.add_argument("--min-p", type=float)
    s.add_argument("--presence-penalty", type=float)
    s.add_argument("--frequency-penalty", type=float)
    s.add_argument("--repetition-penalty", type=float)
    s.add_argument("--seed", type=int, help="the seed of every row that has none")
    s.add_argument("--stop", action="append", metavar="TEXT", help="stop string; repeatable")
    s.add_argument(
        "--logprobs", type=int, metavar="N", help="each token's log-probability and N alternatives"
    )
    s.add_argument(
        "--ignore-eos", action="store_true", default=None, help="generate through <|endoftext|>"
    )
    return p.parse_args(argv)


def default_sampling_params(args) -> dict:
    names = (
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "seed",
        "stop",
        "logprobs",
        "ignore_eos",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def check_args(args) -> None:
    for name in ("batch_size", "concurrency", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.score and default_sampling_params(args):
        raise ValueError("--score takes no sampling flags: scores use the model's own distribution")
    check_job(default_sampling_params(args), "score" if args.score else "generate")


# --- the two ways to run ----------------------------------------------------------------------
# Each takes [(key, prompt, sampling_params)] and yields (key, output columns) as rows finish.


def run_in_process(args, rows: list) -> Iterator[tuple[int, dict]]:
    import gpt2gen

    if args.threads is not None:
        gpt2gen.set_num_threads(args.threads)
    model = gpt2gen.GPT2.from_pretrained(
        args.model,
        args.models_dir,
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        max_batch=args.batch_size,
    )
    runner = RowRunner(
        model, default_sampling_params(args), task="score" if args.score else "generate"
    )

    def run(batch):
        outputs = runner.run([prompt for _, prompt, _ in batch], [params for _, _, params in batch])
        return [(key, out) for (key, _, _), out in zip(batch, outputs)]

    in_flight = args.concurrency or 2
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    with ThreadPoolExecutor(in_flight) as pool:
        pending = set()
        for batch in batches:
            if len(pending) >= in_flight:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield from future.result()
            pending.add(pool.submit(run, batch))
        for future in pending:
            yield from future.result()


def _request_row(row: dict) -> dict:
    """Ray preprocess: the JSON request back into prompt and sampling_params."""
    return {"key": row["key"], **json.loads(row["request"])}


def _output_row(row: dict) -> dict:
    """Ray postprocess: the key and the outputs (the inputs stay in the driver)."""
    return {k: v for k, v in row.items() if k not in ("prompt", "sampling_params")}


def _check_model(source: str, models_dir: Optional[str]) -> None:
    """Run on the cluster: the model is there (its config loads)."""
    from .checkpoint import load_hparams, resolve_model_dir

    load_hparams(resolve_model_dir(source, models_dir))


def run_on_ray(args, rows: list) -> Iterator[tuple[int, dict]]:
    from .ray_data import ProcessorConfig, build_processor  # says what to install without Ray

    config = ProcessorConfig(
        model_source=args.model,
        batch_size=args.batch_size,
        concurrency=args.concurrency or 1,
        num_threads=args.threads or 1,
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        sampling_params=default_sampling_params(args),
        task="score" if args.score else "generate",
        models_dir=args.models_dir,
    )
    import ray

    started = not ray.is_initialized()
    if started:
        # A bare --ray: RAY_ADDRESS's cluster, else a new one ("local": not whichever cluster
        # this machine last ran, as Ray's default would).
        ray.init(
            address=args.ray or os.environ.get("RAY_ADDRESS") or "local", logging_level="WARNING"
        )
    try:
        # A wrong --model would kill each actor as it starts, in a long Ray traceback; one task
        # on the cluster says it in one line first.
        try:
            ray.get(ray.remote(_check_model).remote(args.model, args.models_dir))
        except ray.exceptions.RayTaskError as error:
            raise error.cause from None
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is on stderr
        # Prompts and sampling_params differ in type from line to line (text or ids, a string or a
        # list of stop strings), which one Arrow column cannot hold: they travel as JSON text.
        items = [
            {"key": key, "request": json.dumps({"prompt": prompt, "sampling_params": params})}
            for key, prompt, params in rows
        ]
        dataset = ray.data.from_items(
            items, override_num_blocks=math.ceil(len(items) / args.batch_size)
        )
        processor = build_processor(config, preprocess=_request_row, postprocess=_output_row)
        for row in processor(dataset).iter_rows():
            row = dict(row)
            yield row.pop("key"), row
    finally:
        if started:
            ray.shutdown()


# --- the command --------------------------------------------------------------------------------


class _Progress:
    """rows/s (tqdm's rate) and generated (or scored) tokens/s on stderr."""

    def __init__(self, total: int, done: int, disable: bool):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=done,
            unit="row",
            file=sys.stderr,
            disable=disable,
            dynamic_ncols=True,
            smoothing=0,
        )
        self.tokens = 0
        self.start = time.perf_counter()

    def update(self, outputs: dict) -> None:
        self.tokens += outputs.get("num_generated_tokens") or outputs.get("num_input_tokens") or 0
        elapsed = time.perf_counter() - self.start
        self.bar.set_postfix_str(f"{self.tokens / elapsed:.1f} tok/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run(args) -> int:
    """Runs the command; returns the number of lines written by this run."""
    check_args(args)
    fmt, requests = read_requests(args.input)
    if args.score and fmt != PLAIN:
        raise BatchFileError(
            f'{args.input}: --score takes plain lines ({{"prompt": ...}}), not OpenAI batch lines'
        )
    done = answered(args.output, fmt, requests, args.input)
    todo = requests[done:]
    if not todo:
        print(
            f"gpt2gen batch: all {len(requests)} requests of {args.input} are already in {args.output}",
            file=sys.stderr,
        )
        return 0
    columns = output_columns("score" if args.score else "generate", fail_fast=False)
    ready: dict[int, dict] = {}  # finished rows waiting for an earlier one, by position in todo
    for k, request in enumerate(todo):
        if request.error is not None:
            ready[k] = {**{c: None for c in columns}, ERROR_COLUMN: request.error}
    rows = [(k, r.prompt, r.sampling_params) for k, r in enumerate(todo) if r.error is None]
    runner = run_on_ray if args.ray is not None else run_in_process
    progress = _Progress(len(requests), done, args.no_progress)
    written = 0
    try:
        with open(args.output, "a", encoding="utf-8") as f:
            results = runner(args, rows) if rows else iter(())
            for _ in ready:
                progress.update({})
            while True:
                while written in ready:  # write in input order
                    outputs = ready.pop(written)
                    request = todo[written]
                    if args.fail_fast and outputs[ERROR_COLUMN] is not None:
                        f.flush()
                        raise BatchFileError(
                            f"{args.input}:{request.line}: {outputs[ERROR_COLUMN]}"
                        )
                    f.write(
                        dumps(output_record(fmt, request, outputs, model_name=args.model)) + "\n"
                    )
                    written += 1
                if written == len(todo):
                    break
                f.flush()  # a finished batch is on disk before the next is waited for
                key, outputs = next(results)
                ready[key] = outputs
                progress.update(outputs)
    finally:
        progress.close()
    return written


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    from .checkpoint import CheckpointError
    from .cli import error_message

    try:
        written = run(args)
    except KeyboardInterrupt:
        print("\ngpt2gen batch: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (CheckpointError, ValueError, TypeError, OSError, ImportError) as error:
        print(f"gpt2gen batch: error: {error_message(error)}", file=sys.stderr)
        return 1
    if written:
        print(f"gpt2gen batch: wrote {written} lines to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
