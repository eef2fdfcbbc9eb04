#!/usr/bin/env python
"""Serving benchmark: `gpt2gen serve` against llama.cpp's `llama-server`, side by side in one run.

    python benchmarks/bench_serve.py --llama-server /path/to/llama-server      # or LLAMA_SERVER=...
    python benchmarks/bench_serve.py --build-llama /work/llama                  # fetch + build it first
    python benchmarks/bench_serve.py --no-llama --quick                         # gpt2gen alone

Both servers get the same random weights of the GPT-2 124M shape (no download): gpt2gen a
Hugging Face-layout checkpoint (fp32, and int8 packed at load), llama-server the same tensors
written as GGUF with the `gguf` package (f32, and q8_0 made by llama-quantize). llama-server runs
as the issue says, `-np 8` (8 parallel slots, continuous batching); gpt2gen with --max-batch 16.
Both use the same thread count and run at the same time, measured in turn (the order alternates
between repeats, so a noisy neighbour hurts them alike).

Every request is `/v1/completions` with a 32-token prompt of its own (token ids, so both
tokenizers agree; different prompts, so llama-server's prompt cache cannot skip prefills), 48 new
tokens (ignore_eos), plain temperature-0.8 sampling (top-k, top-p, min-p off on both), streamed. Figures, per concurrency level
(1, 2, 4, 8, 16 streams started together):

* aggregate tok/s: all streams' tokens / wall time from the first request to the last [DONE];
* TTFT p50: request sent -> first text chunk;
* ITL p50 / p99: gaps between consecutive text chunks, over all streams (each chunk is one token
  here: the random model's tokens are whole ASCII text);
* medians over the repeats (ITL percentiles over the pooled gaps).

and the issue's other targets: 8 streams at once against the same 8 one after another; a
1-token request sent while 7 long (128-token) streams run, its latency as a share of theirs; one
stream's decode rate through the server against the library's own (`GPT2.stream` in this process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import llama_cpp_tools
import numpy as np

PROMPT_TOKENS, NEW_TOKENS, LONG_TOKENS, TEMPERATURE = 32, 48, 128, 0.8
LLAMA_SLOTS = 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    llama_cpp_tools.add_arguments(p, "llama-server")
    p.add_argument("--llama-quantize", default=os.environ.get("LLAMA_QUANTIZE"),
                   help="llama-quantize binary (default: $LLAMA_QUANTIZE, else next to llama-server)")
    p.add_argument("--no-llama", action="store_true", help="measure gpt2gen alone")
    p.add_argument("--dtypes", default="fp32,int8", help="comma-separated: fp32 (vs f32), int8 (vs q8_0)")
    p.add_argument("--levels", default="1,2,4,8,16", help="concurrent streams")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="for both servers")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 repeat, levels 1,8")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpt2gen-bench-serve"),
                   help="where the weights are written (kept for the next run)")
    p.add_argument("--out", default="", help="path stem: writes STEM.md and STEM.json")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.levels = 1, "1,8"
    a.levels = [int(x) for x in a.levels.split(",")]
    a.dtypes = [d.strip() for d in a.dtypes.split(",")]
    if any(d not in ("fp32", "int8") for d in a.dtypes):
        p.error("--dtypes takes fp32 and/or int8")
    return a


# --- llama.cpp ---------------------------------------------------------------------------------


def find_llama(args) -> tuple:
    """(llama-server, llama-quantize) paths, building them when asked."""
    server = llama_cpp_tools.find_tool("llama-server", args.llama_server, args.build_llama, "bench_serve")
    quantizer = (Path(args.llama_quantize) if args.llama_quantize
                 else llama_cpp_tools.sibling_tool(server, "llama-quantize", args.build_llama, "bench_serve"))
    return server, quantizer


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, label: str, command: list, port: int):
        self.label, self.port = label, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.devnull, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not start: {' '.join(command)}")
            time.sleep(0.5)

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


def start_gpt2gen(model_dir: Path, dtype: str, threads: int) -> Server:
    port = free_port()
    return Server(f"gpt2gen {dtype}", [
        sys.executable, "-c", "import sys, gpt2gen.cli; sys.exit(gpt2gen.cli.main())", "serve",
        "--model", str(model_dir), "--dtype", {"fp32": "float32", "int8": "int8"}[dtype],
        "--threads", str(threads), "--max-batch", "16", "--port", str(port), "--no-access-log",
        "--log-level", "warning"], port)


def start_llama(binary: str, gguf_path: Path, label: str, threads: int) -> Server:
    port = free_port()
    return Server(f"llama-server {label}", [
        binary, "-m", str(gguf_path), "-np", str(LLAMA_SLOTS), "-c", str(LLAMA_SLOTS * llama_cpp_tools.SHAPE_124M["n_positions"]),
        "-t", str(threads), "-tb", str(threads), "--host", "127.0.0.1", "--port", str(port)], port)


# --- load --------------------------------------------------------------------------------------


def prompt_ids(seed: int) -> list:
    """A different prompt per request, so llama-server's prompt cache cannot skip a prefill that
    gpt2gen (which has no prompt cache) has to do."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(300, 1000, PROMPT_TOKENS)]


async def one_stream(http: httpx.AsyncClient, url: str, seed: int, max_tokens: int = NEW_TOKENS,
                     generating: asyncio.Event | None = None) -> dict:
    """Streams one completion; returns its send time, chunk arrival times and end time.
    ``generating`` is set when the first text arrives."""
    # Sampling spelt out: plain temperature sampling on both (llama.cpp's default top-k 40,
    # top-p 0.95 and min-p 0.05 off, as gpt2gen's are by default).
    body = {"prompt": prompt_ids(seed), "max_tokens": max_tokens, "temperature": TEMPERATURE,
            "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed, "stream": True, "ignore_eos": True}
    sent = time.perf_counter()
    arrivals = []
    # A connection per request: reusing one races the server closing it (llama-server does).
    async with http.stream("POST", f"{url}/v1/completions", json=body,
                           headers={"Connection": "close"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if any(c.get("text") for c in chunk.get("choices", [])):
                arrivals.append(time.perf_counter())
                if generating is not None:
                    generating.set()
    return {"sent": sent, "arrivals": arrivals, "end": time.perf_counter()}


async def level(url: str, streams: int, seed: int) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(http, url, seed + k) for k in range(streams)))
        wall = time.perf_counter() - start
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    return {"tok_s": streams * NEW_TOKENS / wall, "wall": wall,
            "ttft": statistics.median(r["arrivals"][0] - r["sent"] for r in results), "gaps": gaps,
            "decode_tok_s": statistics.median((len(r["arrivals"]) - 1) / (r["arrivals"][-1] - r["arrivals"][0])
                                              for r in results)}


async def sequential(url: str, streams: int, seed: int) -> float:
    async with httpx.AsyncClient(timeout=600) as http:
        start = time.perf_counter()
        for k in range(streams):
            await one_stream(http, url, seed + k)
        return time.perf_counter() - start


async def head_of_line(url: str, seed: int) -> float:
    """A 1-token request sent once 7 long streams are all generating: its latency / theirs."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
        generating = [asyncio.Event() for _ in range(7)]
        longs = [asyncio.ensure_future(one_stream(http, url, seed + k, LONG_TOKENS, generating[k]))
                 for k in range(7)]
        for event in generating:
            await event.wait()
        short = await one_stream(http, url, seed + 99, max_tokens=1)
        results = await asyncio.gather(*longs)
    short_latency = short["end"] - short["sent"]
    long_time = statistics.median(r["end"] - r["sent"] for r in results)
    return short_latency / long_time


def library_decode_rate(model_dir: Path, dtype: str, threads: int, seed: int) -> float:
    """GPT2.stream's decode tok/s for one 48-token stream, in this process (the servers idle)."""
    import gpt2gen

    gpt2gen.set_num_threads(threads)
    model = gpt2gen.GPT2.from_pretrained(str(model_dir), dtype={"fp32": "float32", "int8": "int8"}[dtype])
    prompt = model.decode(prompt_ids(seed))
    rates = []
    for k in range(3):
        arrivals = []
        for piece in model.stream(prompt, NEW_TOKENS, temperature=TEMPERATURE, seed=seed + k, ignore_eos=True):
            if piece:
                arrivals.append(time.perf_counter())
        rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    return statistics.median(rates)


# --- the run -----------------------------------------------------------------------------------


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(args) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = llama_cpp_tools.checkpoint(workdir)
    llama = None if args.no_llama else find_llama(args)
    gguf_files = {}
    if llama:
        f32 = llama_cpp_tools.checkpoint_gguf(model_dir, workdir / "gpt2-124M-random-f32.gguf")
        gguf_files = {dtype: llama_cpp_tools.quantized(llama[1], f32, llama_cpp_tools.PEER_TYPE[dtype]) for dtype in args.dtypes}
    results = {"levels": {}, "extra": {}}
    for dtype in args.dtypes:
        servers = [start_gpt2gen(model_dir, dtype, args.threads)]
        if llama:
            servers.append(start_llama(llama[0], gguf_files[dtype], llama_cpp_tools.PEER_TYPE[dtype],
                                       args.threads))
        try:
            for server in servers:  # warm up: first requests allocate caches and pages
                asyncio.run(level(server.url, 2, 0))
            runs = {(s.label, n): [] for s in servers for n in args.levels}
            for repeat in range(args.repeats):
                order = servers if repeat % 2 == 0 else servers[::-1]
                for n in args.levels:
                    for server in order:
                        runs[(server.label, n)].append(asyncio.run(level(server.url, n, 1000 * repeat)))
                        print(f"  {server.label:22s} {n:2d} streams: {runs[(server.label, n)][-1]['tok_s']:7.1f} tok/s",
                              flush=True)
            for (label, n), samples in runs.items():
                results["levels"][f"{label}|{n}"] = {
                    "tok_s": statistics.median(s["tok_s"] for s in samples),
                    "ttft_ms": 1000 * statistics.median(s["ttft"] for s in samples),
                    "itl_p50_ms": 1000 * pct([g for s in samples for g in s["gaps"]], 50),
                    "itl_p99_ms": 1000 * pct([g for s in samples for g in s["gaps"]], 99),
                    "decode_tok_s": statistics.median(s["decode_tok_s"] for s in samples)}
            for server in servers:
                together = statistics.median(asyncio.run(level(server.url, 8, 5000 + r))["wall"]
                                             for r in range(args.repeats))
                alone = statistics.median(asyncio.run(sequential(server.url, 8, 6000 + r))
                                          for r in range(args.repeats))
                hol = statistics.median(asyncio.run(head_of_line(server.url, 7000 + r)) for r in range(args.repeats))
                single = asyncio.run(level(server.url, 1, 8000))["decode_tok_s"]
                results["extra"][server.label] = {"speedup8": alone / together, "hol_share": hol,
                                                  "single_decode_tok_s": single}
        finally:
            for server in servers:
                server.stop()
        results["extra"][f"library {dtype}"] = {"decode_tok_s": library_decode_rate(model_dir, dtype, args.threads, 9000)}
    return results


def report(args, results, started_load, ended_load) -> str:
    lines = [f"# bench_serve ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"`python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}`", "",
             f"124M shape, random weights; {args.threads} threads per server; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs; load average {started_load:.2f} at the start, {ended_load:.2f} at the end "
             f"(other sessions share this machine); {args.repeats} repeats, medians; {NEW_TOKENS}-token streams, "
             f"{PROMPT_TOKENS}-token prompt, temperature {TEMPERATURE}; llama-server -np {LLAMA_SLOTS}.", ""]
    for dtype in args.dtypes:
        ours = f"gpt2gen {dtype}"
        theirs = f"llama-server {llama_cpp_tools.PEER_TYPE[dtype]}"
        have_llama = f"{theirs}|{args.levels[0]}" in results["levels"]
        lines += [f"## {ours}" + (f" vs {theirs}" if have_llama else ""), "",
                  "| streams | gpt2gen tok/s | llama-server tok/s | ratio | TTFT p50 ms (ours / theirs) "
                  "| ITL p50 ms | ITL p99 ms |", "|---|---|---|---|---|---|---|"]
        for n in args.levels:
            a = results["levels"][f"{ours}|{n}"]
            b = results["levels"].get(f"{theirs}|{n}")
            if b:
                lines.append(f"| {n} | {a['tok_s']:.1f} | {b['tok_s']:.1f} | {a['tok_s'] / b['tok_s']:.2f}× "
                             f"| {a['ttft_ms']:.0f} / {b['ttft_ms']:.0f} | {a['itl_p50_ms']:.1f} / {b['itl_p50_ms']:.1f} "
                             f"| {a['itl_p99_ms']:.1f} / {b['itl_p99_ms']:.1f} |")
            else:
                lines.append(f"| {n} | {a['tok_s']:.1f} | – | – | {a['ttft_ms']:.0f} | {a['itl_p50_ms']:.1f} "
                             f"| {a['itl_p99_ms']:.1f} |")
        lines.append("")
        extra = results["extra"]
        for label in (ours, theirs):
            if label in extra:
                e = extra[label]
                lines.append(f"- {label}: 8 streams at once finish {e['speedup8']:.2f}× faster than one after another; "
                             f"a 1-token request among 7 long streams takes {100 * e['hol_share']:.1f}% of their time")
        library = extra[f"library {dtype}"]["decode_tok_s"]
        single = extra[ours]["single_decode_tok_s"]
        lines += [f"- one stream through gpt2gen's server decodes at {single:.1f} tok/s, the library alone at "
                  f"{library:.1f} tok/s: {100 * single / library:.0f}%", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers are stopped too
    load_before = os.getloadavg()[0]
    results = run(args)
    text = report(args, results, load_before, os.getloadavg()[0])
    print(text)
    if args.out:
        Path(f"{args.out}.md").write_text(text + "\n")
        Path(f"{args.out}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
