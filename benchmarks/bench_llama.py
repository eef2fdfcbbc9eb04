#!/usr/bin/env python
"""Decode and prefill speed against llama.cpp's llama-bench, side by side in one run.

    python benchmarks/bench_llama.py --llama-bench /path/to/llama-bench       # or LLAMA_BENCH=...
    python benchmarks/bench_llama.py --build-llama /work/llama                 # fetch + build it first
    python benchmarks/bench_llama.py --rounds 1 --depths 32 --new-tokens 16   # a quick look

Both engines run the same random weights of the GPT-2 124M shape (no download, seed 0):
gpt2gen a Hugging Face-layout checkpoint, packed by ``gpt2gen.pack_params`` for each format in
``gpt2gen.packing.FORMATS``; llama.cpp the same tensors as f32 GGUF (the ``gguf`` package) and
the type each of our formats is raced against, made by llama-quantize: fp32 / f32, bf16 / f16,
int8 / q8_0, int4 / q4_0. Batch 1, the same thread count for both (``--threads``, default 2).

* decode tok/s at depth d: the rate of ``--new-tokens`` greedy tokens after d tokens already in
  the cache. llama-bench: ``-d d -n N -p 0``. gpt2gen: ``gpt2gen.generate`` on a d-token prompt
  asking for N+1 tokens, N / (time of the last token - time of the first), from per-token
  callbacks (the first token is the prefill's). GPT-2 has 1024 positions, so a depth is capped at
  1024 - N - 1 (the tokens timed at "1024" are the model's last positions);
* prefill-128 tok/s (fp32 / f32): llama-bench ``-p 128 -n 0``; gpt2gen: 128 / the time of a
  generate() call on a 128-token prompt for 1 token;
* weights GB/s: bytes of gpt2gen's weights one decode step reads (weight_bytes_per_token) × tok/s,
  at the smallest depth, and its fraction of fp32's; the same for llama.cpp (its GGUF's tensors
  but the two embeddings, of which a step reads a row each: ``gguf_bytes_per_token``);
* read bandwidth: OpenBLAS sgemv over 1 GiB after each round (``read_bandwidth.py``), and what
  each decode target asks of it: the target's tok/s × gpt2gen's weights a token. A target that
  asks for more than the machine reads cannot be met by streaming the weights faster;
* where gpt2gen has the opt-in bf16 KV cache (``kv_cache_dtype``), beside each format a row
  "FORMAT+bf16kv": the same weights with it (half the cache's bytes, as llama.cpp's f16 cache),
  against the same llama.cpp run;
* the long-context ratio (deepest over shallowest rate) the bytes allow: the weights plus the KV
  cache a step reads at the shallowest depth over the same at the deepest. The fp32 cache of the
  124M shape holds 75 MB at 1024 positions, as much as the int4 weights, so there its bound is
  about one half whatever the kernels do.

Each round runs every llama.cpp type once per depth (llama-bench ``-r 1``, after its warm-up)
and, right before or after it (the order alternates between depths and rounds), gpt2gen's formats
raced against that type at that depth; figures are medians over the rounds. Pairs this close
matter here: a shared VM's speed moves by tens of percent within seconds. llama.cpp runs as
llama-bench does by default (f16 KV cache, flash attention auto), gpt2gen with its defaults
(float32 KV cache). The run ends with issue 15's targets as PASS/FAIL lines computed from its own
numbers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp_tools
import numpy as np
from read_bandwidth import probe_matrix, read_bandwidth
from weight_bytes import weight_bytes_per_token

import gpt2gen
from gpt2gen.packing import FORMATS

PREFILL_TOKENS = 128
# Issue 15's decode targets: gpt2gen's rate over the rate of the llama.cpp type it races.
DECODE_TARGET = {"fp32": 1.0, "bf16": 1.25, "int8": 1.5, "int4": 1.3}
# ... and equivalently, each packed format's weights GB/s as a share of fp32's.
GBS_TARGET = {"bf16": 0.90, "int8": 0.85, "int4": 0.75}
PREFILL_TARGET = 1.0
LONG_CONTEXT_TARGET = 0.60  # decode at the deepest depth over decode at the shallowest
# OpenBLAS's threads spin for a while after the bandwidth probe, taking the cores from what runs
# next (bench_generate.py measured gpt2gen's prefill at half speed right after it).
SETTLE_S = 1.0


@dataclass
class Row:
    """One gpt2gen configuration and the llama.cpp type it is raced against."""

    label: str
    weights: str  # "fp32" or a gpt2gen.packing.FORMATS entry
    peer: str | None  # a llama.cpp type, None when no peer is defined
    options: dict = field(default_factory=dict)  # extra gpt2gen.generate() keyword arguments


def rows() -> list:
    """Each format, and beside it the same weights with the opt-in bf16 KV cache where the
    installed gpt2gen has it (issue 15): half the cache's bytes, as llama.cpp's f16 cache."""
    kv_option = "kv_cache_dtype" in inspect.signature(gpt2gen.generate).parameters
    out = []
    for fmt in ("fp32", *FORMATS):
        peer = llama_cpp_tools.PEER_TYPE.get(fmt)
        out.append(Row(fmt, fmt, peer))
        if kv_option:
            out.append(Row(f"{fmt}+bf16kv", fmt, peer, {"kv_cache_dtype": "bf16"}))
    return out


def cache_bytes_per_token(depth: int, new_tokens: int, options: dict) -> float:
    """Bytes of KV cache a decode step reads, on average over the new_tokens steps after depth."""
    shape = llama_cpp_tools.SHAPE_124M
    itemsize = 2 if options.get("kv_cache_dtype") == "bf16" else 4
    return shape["n_layer"] * 2 * shape["n_embd"] * itemsize * (depth + (new_tokens + 1) / 2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    llama_cpp_tools.add_arguments(p, "llama-bench")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; figures are medians")
    p.add_argument("--depths", default="32,256,1024",
                   help="context depths for decode, comma-separated (capped at 1024 - new tokens - 1)")
    p.add_argument("--new-tokens", type=int, default=64, help="decode tokens timed at each depth")
    p.add_argument("--formats", default="",
                   help="comma-separated gpt2gen formats to race (default: fp32 and every packing.FORMATS entry)")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpt2gen-bench-llama"),
                   help="where the weights are written (kept for the next run)")
    p.add_argument("--out", default="", help="path stem: writes STEM.md and STEM.json")
    a = p.parse_args(argv)
    if a.threads < 1 or a.rounds < 1 or not 1 <= a.new_tokens < llama_cpp_tools.SHAPE_124M["n_positions"] // 2:
        p.error("--threads and --rounds must be ≥ 1, --new-tokens in [1, 511]")
    try:
        a.depths = sorted({int(d) for d in a.depths.split(",")})
    except ValueError:
        p.error(f"--depths takes comma-separated integers, got {a.depths!r}")
    if a.depths[0] < 1:
        p.error("--depths must be ≥ 1")
    known = [r.label for r in rows()]
    if a.formats:
        a.formats = [f.strip() for f in a.formats.split(",")]
        unknown = [f for f in a.formats if f not in known]
        if unknown:
            p.error(f"--formats: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    else:
        a.formats = known
    return a


def effective_depth(depth: int, new_tokens: int) -> int:
    """The depth actually run: the prompt plus the N+1 tokens gpt2gen asks for fit in n_ctx."""
    return min(depth, llama_cpp_tools.SHAPE_124M["n_positions"] - new_tokens - 1)


# --- the two engines -------------------------------------------------------------------------------


def llama_bench(binary: Path, model: Path, threads: int, args: list) -> list:
    """llama-bench's JSON records (one per test) for ``args`` on ``model``."""
    command = [str(binary), "-m", str(model), "-t", str(threads), "-r", "1", "-o", "json", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def llama_decode(binary, model, threads, depths, new_tokens) -> dict:
    """{depth: tok/s} from one llama-bench run over every depth."""
    records = llama_bench(binary, model, threads, ["-p", "0", "-n", str(new_tokens),
                                                   "-d", ",".join(str(d) for d in depths)])
    return {r["n_depth"]: r["avg_ts"] for r in records if r["n_gen"] == new_tokens}


def llama_prefill(binary, model, threads) -> float:
    (record,) = llama_bench(binary, model, threads, ["-p", str(PREFILL_TOKENS), "-n", "0"])
    return record["avg_ts"]


def gpt2gen_decode(params, n_head, prompt, new_tokens, options) -> float:
    """Greedy tok/s of the ``new_tokens`` decode steps after ``prompt``'s prefill."""
    stamps = []
    gpt2gen.generate(prompt, params, n_head, new_tokens + 1,
                     on_token=lambda _: stamps.append(time.perf_counter()), **options)
    return new_tokens / (stamps[-1] - stamps[0])


def gpt2gen_prefill(params, n_head, prompt) -> float:
    start = time.perf_counter()
    gpt2gen.generate(prompt, params, n_head, 1)
    return len(prompt) / (time.perf_counter() - start)


# --- the run -------------------------------------------------------------------------------------


def run(args) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bench = llama_cpp_tools.find_tool("llama-bench", args.llama_bench, args.build_llama, "bench_llama")
    quantizer = llama_cpp_tools.sibling_tool(bench, "llama-quantize", args.build_llama, "bench_llama")
    model_dir = llama_cpp_tools.checkpoint(workdir)
    f32 = llama_cpp_tools.checkpoint_gguf(model_dir, workdir / "gpt2-124M-random-f32.gguf")
    _, hparams, base = gpt2gen.load_pretrained(str(model_dir))
    n_head = hparams["n_head"]
    gpt2gen.set_num_threads(args.threads)

    selected = [r for r in rows() if r.label in args.formats]
    params = {r.weights: base if r.weights == "fp32" else gpt2gen.pack_params(base, r.weights) for r in selected}
    peers = sorted({r.peer for r in selected if r.peer}, key=list(llama_cpp_tools.PEER_TYPE.values()).index)
    gguf_files = {peer: llama_cpp_tools.quantized(quantizer, f32, peer) for peer in peers}
    depths = [effective_depth(d, args.new_tokens) for d in args.depths]
    rng = np.random.default_rng(1)
    prompts = {d: [int(t) for t in rng.integers(0, hparams["n_vocab"], d)] for d in depths}
    prefill_prompt = [int(t) for t in rng.integers(0, hparams["n_vocab"], PREFILL_TOKENS)]

    for row in selected:  # warm-up: page in the weights, start the thread pool
        gpt2gen_decode(params[row.weights], n_head, prompts[depths[0]], 2, row.options)

    samples = {"gpt2gen": {r.label: {d: [] for d in depths} for r in selected},
               "llama.cpp": {p: {d: [] for d in depths} for p in peers},
               "prefill": {"gpt2gen": [], "llama.cpp": []}, "read_bandwidth": []}
    probe = probe_matrix()
    groups = [(peer, [r for r in selected if r.peer == peer]) for peer in peers]
    groups += [(None, [r for r in selected if r.peer is None])] if any(r.peer is None for r in selected) else []
    for round_ in range(args.rounds):
        for peer, group in groups:
            # Pairs of one measurement each (see the docstring), the order alternating.
            pairs = []
            for d in depths:
                def ours(d=d, group=group):
                    for row in group:
                        rate = gpt2gen_decode(params[row.weights], n_head, prompts[d], args.new_tokens, row.options)
                        samples["gpt2gen"][row.label][d].append(rate)

                def theirs(d=d, peer=peer):
                    (rate,) = llama_decode(bench, gguf_files[peer], args.threads, [d], args.new_tokens).values()
                    samples["llama.cpp"][peer][d].append(rate)

                pairs.append((ours, theirs))
            if any(row.label == "fp32" for row in group):
                def our_prefill():
                    samples["prefill"]["gpt2gen"].append(gpt2gen_prefill(params["fp32"], n_head, prefill_prompt))

                def their_prefill(peer=peer):
                    samples["prefill"]["llama.cpp"].append(llama_prefill(bench, gguf_files[peer], args.threads))

                pairs.append((our_prefill, their_prefill))
            for i, (ours, theirs) in enumerate(pairs):
                engines = [ours] if peer is None else [theirs, ours] if (round_ + i) % 2 == 0 else [ours, theirs]
                for engine in engines:
                    engine()
            line = "  ".join(f"{r.label} {samples['gpt2gen'][r.label][depths[0]][-1]:.1f}" for r in group)
            if peer:
                line += f"  | llama.cpp {peer} {samples['llama.cpp'][peer][depths[0]][-1]:.1f}"
            print(f"  round {round_ + 1}/{args.rounds}, depth {depths[0]} tok/s: {line}", flush=True)
        samples["read_bandwidth"].append(read_bandwidth(probe))
        print(f"  round {round_ + 1}/{args.rounds}, read bandwidth {samples['read_bandwidth'][-1]:.1f} GB/s", flush=True)
        time.sleep(SETTLE_S)

    return {"depths": depths, "samples": samples,
            "weight_bytes": {r.label: weight_bytes_per_token(params[r.weights]) for r in selected},
            "cache_bytes": {r.label: {d: cache_bytes_per_token(d, args.new_tokens, r.options) for d in depths}
                            for r in selected},
            "peer_weight_bytes": {peer: llama_cpp_tools.gguf_bytes_per_token(gguf_files[peer]) for peer in peers},
            "rows": [vars(r) for r in selected],
            "llama_bench_version": subprocess.run([str(bench), "--version"], capture_output=True,
                                                  text=True).stderr.strip().splitlines()}


# --- the report ----------------------------------------------------------------------------------


def summarise(results) -> dict:
    """Medians, ratios, GB/s and the targets' verdicts from the samples."""
    s, depths = results["samples"], results["depths"]
    low, high = depths[0], depths[-1]
    median = {"gpt2gen": {label: {d: statistics.median(v) for d, v in by_depth.items()}
                          for label, by_depth in s["gpt2gen"].items()},
              "llama.cpp": {peer: {d: statistics.median(v) for d, v in by_depth.items()}
                            for peer, by_depth in s["llama.cpp"].items()}}
    prefill = {engine: statistics.median(v) for engine, v in s["prefill"].items() if v}
    gbs = {label: results["weight_bytes"][label] * median["gpt2gen"][label][low] / 1e9 for label in median["gpt2gen"]}
    peer_gbs = {peer: results["peer_weight_bytes"][peer] * median["llama.cpp"][peer][low] / 1e9
                for peer in median["llama.cpp"]}
    read_gbs = statistics.median(s["read_bandwidth"])
    # What each decode target asks of the memory: the target's tok/s times our bytes a token,
    # against the machine's read bandwidth measured in the same run.
    needs = [{"label": row["label"], "peer": row["peer"], "target": DECODE_TARGET[row["label"]],
              "gbs": DECODE_TARGET[row["label"]] * median["llama.cpp"][row["peer"]][low]
              * results["weight_bytes"][row["label"]] / 1e9}
             for row in results["rows"] if row["peer"] and row["label"] in DECODE_TARGET]
    # The most the deepest rate can be of the shallowest when a step streams weights and cache
    # at one rate: the bytes a step reads at the shallowest depth over those at the deepest.
    bound = {r["label"]: (results["weight_bytes"][r["label"]] + results["cache_bytes"][r["label"]][low])
             / (results["weight_bytes"][r["label"]] + results["cache_bytes"][r["label"]][high])
             for r in results["rows"]}
    checks = []

    def check(text, value, goal, note=""):
        checks.append({"text": text, "value": value, "goal": goal, "pass": value >= goal, "note": note})

    for row in results["rows"]:
        label, peer = row["label"], row["peer"]
        ours = median["gpt2gen"][label]
        if peer and label in DECODE_TARGET:
            check(f"{label} decode (depth {low}) ≥ {DECODE_TARGET[label]:.2f}× llama.cpp {peer}",
                  ours[low] / median["llama.cpp"][peer][low], DECODE_TARGET[label])
        if label in GBS_TARGET and "fp32" in gbs:
            check(f"{label} weights GB/s ≥ {GBS_TARGET[label]:.0%} of fp32's", gbs[label] / gbs["fp32"],
                  GBS_TARGET[label])
        if high != low:
            check(f"{label} decode at depth {high} ≥ {LONG_CONTEXT_TARGET:.0%} of depth {low}",
                  ours[high] / ours[low], LONG_CONTEXT_TARGET, f"the bytes read allow {bound[label]:.2f}")
    if len(prefill) == 2:
        check(f"fp32 prefill-{PREFILL_TOKENS} ≥ {PREFILL_TARGET:.2f}× llama.cpp f32",
              prefill["gpt2gen"] / prefill["llama.cpp"], PREFILL_TARGET)
    return {"median": median, "prefill": prefill, "gbs": gbs, "peer_gbs": peer_gbs, "read_gbs": read_gbs,
            "needs": needs, "bound": bound, "checks": checks}


def report(args, results, summary, load) -> str:
    depths = results["depths"]
    low, high = depths[0], depths[-1]
    median, gbs = summary["median"], summary["gbs"]
    lines = [f"# bench_llama ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"`python benchmarks/bench_llama.py {' '.join(sys.argv[1:])}`", "",
             f"GPT-2 124M shape, random weights (seed 0); {args.threads} threads each, batch 1; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
             f"{load[0]:.2f} at the start, {load[1]:.2f} at the end (other sessions share this machine); "
             f"alternating rounds: {args.rounds}, medians; {args.new_tokens} greedy tokens timed per depth "
             f"(depth = tokens already in the cache"
             + (f"; {args.depths[-1]} is capped at {high}, GPT-2's last positions" if high != args.depths[-1] else "")
             + "); llama-bench defaults otherwise (f16 KV cache, flash attention auto), gpt2gen's float32 KV cache.",
             f"llama.cpp: {' '.join(results['llama_bench_version'])}", "",
             "decode tok/s, gpt2gen / llama.cpp (ratio):", "",
             "| gpt2gen / llama.cpp | " + " | ".join(f"depth {d}" for d in depths)
             + f" | depth {high} / {low} (gpt2gen; llama.cpp) (bytes: what the bytes read allow) "
             "| weights MB/token (gpt2gen; llama.cpp) "
             f"| weights GB/s at depth {low} (gpt2gen; llama.cpp) | of fp32's GB/s |",
             "|---|" + "---|" * len(depths) + "---|---|---|---|"]
    for row in results["rows"]:
        label, peer = row["label"], row["peer"]
        ours = median["gpt2gen"][label]
        theirs = median["llama.cpp"].get(peer)
        cells = [f"{ours[d]:.1f} / {theirs[d]:.1f} ({ours[d] / theirs[d]:.2f}×)" if theirs else f"{ours[d]:.1f} / –"
                 for d in depths]
        long_ctx = "–" if high == low else (f"{ours[high] / ours[low]:.2f}"
                                             + (f"; {theirs[high] / theirs[low]:.2f}" if theirs else "")
                                             + f" (bytes: {summary['bound'][label]:.2f})")
        share = f"{gbs[label] / gbs['fp32']:.0%}" if "fp32" in gbs else "–"
        mb = f"{results['weight_bytes'][label] / 1e6:.0f}" + (
            f"; {results['peer_weight_bytes'][peer] / 1e6:.0f}" if theirs else "")
        rate = f"{gbs[label]:.1f}" + (f"; {summary['peer_gbs'][peer]:.1f}" if theirs else "")
        lines.append(f"| {label} / {peer or '–'} | " + " | ".join(cells) + f" | {long_ctx} | {mb} | {rate} | {share} |")
    prefill = summary["prefill"]
    if len(prefill) == 2:
        lines += ["", f"prefill-{PREFILL_TOKENS} tok/s, fp32 / f32: gpt2gen {prefill['gpt2gen']:.0f}, llama.cpp "
                      f"{prefill['llama.cpp']:.0f} ({prefill['gpt2gen'] / prefill['llama.cpp']:.2f}×)"]
    reads = results["samples"]["read_bandwidth"]
    lines += ["", f"read bandwidth (OpenBLAS sgemv over 1 GiB, once a round): median {summary['read_gbs']:.1f} GB/s "
                  f"(runs: {', '.join(f'{r:.1f}' for r in reads)}). What each decode target asks (its tok/s × "
                  f"gpt2gen's weights a token, at depth {low}):"]
    lines += [f"- {n['label']} ≥ {n['target']:.2f}× llama.cpp {n['peer']}: {n['gbs']:.1f} GB/s, "
              f"{n['gbs'] / summary['read_gbs']:.0%} of the measured read bandwidth" for n in summary["needs"]]
    lines.append("")
    for c in summary["checks"]:
        note = f"; {c['note']}" if c.get("note") else ""
        lines.append(f"- {'PASS' if c['pass'] else 'FAIL'} {c['text']}: {c['value']:.2f} (goal {c['goal']:.2f}{note})")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    results = run(args)
    summary = summarise(results)
    text = report(args, results, summary, (load_before, os.getloadavg()[0]))
    print(text)
    if args.out:
        Path(f"{args.out}.md").write_text(text + "\n")
        Path(f"{args.out}.json").write_text(json.dumps({"args": vars(args), "results": results, "summary": summary},
                                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
