#!/usr/bin/env python
"""Batch throughput: in-process (one model, 2 threads, and 1 thread) against Ray Data
(gpt2gen.ray_data: 2 actors x 1 thread, and 1 actor x 2 threads), on random weights of the GPT-2
124M shape (no download).

    pip install ".[ray]"
    python benchmarks/bench_batch.py --out benchmarks/results/batch-2cores
    python benchmarks/bench_batch.py --prompts 32 --new-tokens 8 --repeats 1      # a quick look

* in-process: what ``gpt2gen batch --threads 2`` runs without ``--ray`` (its ``run_in_process``:
  batches of ``--batch-size`` rows, two in flight, on one ``GPT2``);
* Ray: ``build_processor(ProcessorConfig(concurrency=A, num_threads=T, batch_size=...))`` on a
  dataset of the same rows, on a local cluster of ``--cpus`` CPUs started once beforehand (its
  start-up time is reported apart); each Ray figure includes starting the actors and loading the
  model in them (a memory map of the checkpoint, so milliseconds).

Configurations alternate within each repeat, so a noisy neighbour hurts them alike; the table
gives medians over repeats. Every row is greedy with a fixed length (``ignore_eos``), and the
script checks that every configuration generated the same tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_load import build  # noqa: E402  (the same random 124M checkpoint writer)

CONFIGS = [
    ("in-process, 2 threads", None, 2),
    ("Ray, 2 actors x 1 thread", 2, 1),
    ("Ray, 1 actor x 2 threads", 1, 2),
    ("in-process, 1 thread", None, 1),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default: 2)")
    p.add_argument(
        "--model-dir",
        help="reuse (or create) the random checkpoint here (default: a temporary one)",
    )
    p.add_argument("--out", default="", help="path stem: writes STEM.md and STEM.json")
    return p.parse_args()


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """Prompts of 4-48 words drawn from a fixed word list (8-100 tokens with the random tokenizer)."""
    words = (
        "the of and to in is was that for it with as his on be at by had are but from or have an they "
        "which one you were her all she there would their we him been has when who will more no if out "
        "so said what up its about into than them can only other new some could time these two may"
    ).split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 49)))) for _ in range(n)]


def run_in_process(model_dir, prompts, args, threads):
    from gpt2gen import batch_cli

    command = batch_cli.parse_args(
        [
            "--model",
            model_dir,
            "--input",
            "-",
            "--output",
            "-",
            "--threads",
            str(threads),
            "--batch-size",
            str(args.batch_size),
            *sampling_flags(args),
        ]
    )
    rows = sorted(
        batch_cli.run_in_process(command, [(i, p, None) for i, p in enumerate(prompts)]),
        key=lambda r: r[0],
    )
    return [out["generated_token_ids"] for _, out in rows]


def run_on_ray(model_dir, prompts, args, actors, threads):
    import ray

    from gpt2gen.ray_data import ProcessorConfig, build_processor

    config = ProcessorConfig(
        model_source=model_dir,
        batch_size=args.batch_size,
        concurrency=actors,
        num_threads=threads,
        sampling_params=sampling_params(args),
    )
    dataset = ray.data.from_items(
        [{"i": i, "prompt": p} for i, p in enumerate(prompts)],
        override_num_blocks=-(-len(prompts) // args.batch_size),
    )
    rows = sorted(build_processor(config)(dataset).take_all(), key=lambda r: r["i"])
    return [list(r["generated_token_ids"]) for r in rows]


def sampling_params(args) -> dict:
    return {"max_tokens": args.new_tokens, "temperature": 0.0, "ignore_eos": True}


def sampling_flags(args) -> list:
    return ["--max-tokens", str(args.new_tokens), "--temperature", "0", "--ignore-eos"]


def main():
    args = parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir or Path(tmp) / "gpt2-124M-random")
        if not (model_dir / "model.safetensors").exists():
            build(model_dir, n_layer=12, n_embd=768, n_head=12, n_vocab=50257, n_ctx=1024)
        prompts = make_prompts(args.prompts)
        start = time.perf_counter()
        ray.init(
            address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING"
        )
        ray_start = time.perf_counter() - start
        ray.data.DataContext.get_current().enable_progress_bars = False

        times = {name: [] for name, _, _ in CONFIGS}
        loads, reference = [], None
        for repeat in range(args.repeats):
            for name, actors, threads in CONFIGS:
                t0 = time.perf_counter()
                if actors is None:
                    tokens = run_in_process(str(model_dir), prompts, args, threads)
                else:
                    tokens = run_on_ray(str(model_dir), prompts, args, actors, threads)
                times[name].append(time.perf_counter() - t0)
                reference = reference or tokens
                if tokens != reference:
                    raise SystemExit(f"{name} generated other tokens than {CONFIGS[0][0]}")
                loads.append(os.getloadavg()[0])
                print(f"repeat {repeat + 1}: {name}: {times[name][-1]:.2f} s", file=sys.stderr)
        ray.shutdown()

    n_tokens = sum(len(t) for t in reference)
    first = statistics.median(times[CONFIGS[0][0]])
    lines = [
        f"{args.prompts} prompts (4-48 words), {args.new_tokens} greedy tokens each ({n_tokens} in all), "
        f"batch size {args.batch_size}, random GPT-2 124M-shape weights (float32); median of {args.repeats} "
        f"(configurations alternate); Ray cluster of {args.cpus} CPUs started once in {ray_start:.1f} s "
        f"(not included); 1-min load average during the runs {min(loads):.1f}-{max(loads):.1f}; "
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')}",
        "",
        "| configuration | wall time (s) | rows/s | generated tok/s | vs in-process |",
        "|---|---:|---:|---:|---:|",
    ]
    results = []
    for name, actors, threads in CONFIGS:
        t = statistics.median(times[name])
        lines.append(
            f"| {name} | {t:.1f} | {args.prompts / t:.1f} | {n_tokens / t:.1f} | {first / t:.2f}x |"
        )
        results.append(
            {
                "configuration": name,
                "actors": actors,
                "threads": threads,
                "seconds": times[name],
                "median_s": t,
                "rows_per_s": args.prompts / t,
                "tokens_per_s": n_tokens / t,
            }
        )
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out + ".md").write_text(report + "\n")
        Path(args.out + ".json").write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "ray_start_s": ray_start,
                    "load_averages": loads,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
