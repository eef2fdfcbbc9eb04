#!/usr/bin/env python
"""End-to-end generation benchmark: gpt2gen against NumPy (with a KV cache, and picoGPT-style full
recompute) and transformers, on random weights of the GPT-2 124M / 355M shapes (no download).

    python benchmarks/bench_generate.py                       # 124M and 355M, 5 repeats
    python benchmarks/bench_generate.py --quick               # 124M, 3 repeats, short runs
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_generate.py ...

Every engine is measured in turn inside each repeat (alternating, so a noisy neighbour hurts them
alike) and the median over repeats is reported. Figures:

* prefill tok/s: prompt tokens / wall time of processing a 32- or 128-token prompt up to the first
  token (gpt2gen.generate(prompt, params, n_head, 1), one forward for the others);
* TTFT: wall time from the call to the first new token, 32-token prompt;
* decode tok/s (batch 1): greedy tokens after the first, 32-token prompt, from per-token timestamps;
  also as GB/s of weights read per token (every block weight, ln_f and the tied wte once) and as a
  fraction of a measured read bandwidth (OpenBLAS sgemv over a 1 GiB matrix, same thread count);
* batch-8: total decode tok/s of 8 prompts generated together (gpt2gen.generate(list of prompts),
  transformers with a [8, 32] input and its KV cache);
* 64-token generation: wall time of generating 64 tokens from the 32-token prompt (prefill
  included), for every engine; the picoGPT-style reference is timed once, in the first repeat
  (its ~10-40 s runs average themselves);
* gpt2gen_bf16 / _int8 / _int4: gpt2gen on gpt2gen.packing.pack_params(params, "bf16" / ...);
* peak RSS: VmHWM of a fresh child process that builds the weights and runs one short generation.

llama.cpp is raced in `bench_llama.py` (its llama-bench built from source, on the same weights,
in the same run); this script has no fixed peer numbers.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, if set, slow OpenBLAS on this CPU; the output says whether
they were set. Unsetting both for the benchmark command (not the tests) is legitimate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = {  # n_layer, n_embd, n_head
    "124M": (12, 768, 12),
    "355M": (24, 1024, 16),
}
N_VOCAB, N_CTX = 50257, 1024
# gpt2gen.packing.FORMATS, spelt out: importing gpt2gen (NumPy) must wait for the thread settings.
PACKED = {"gpt2gen_bf16": "bf16", "gpt2gen_int8": "int8", "gpt2gen_int4": "int4"}
ENGINES = ["gpt2gen", *PACKED, "numpy_kv", "numpy_full", "transformers"]
GEN_TOKENS = 64  # the "generation of 64 tokens" measurement
# OpenBLAS's and torch's worker threads keep spinning for a while after a call, taking the cores
# from whatever runs next (measured: gpt2gen's prefill right after the sgemv probe ran at half
# speed, normal after a 0.5 s pause); each engine starts after this pause.
SETTLE_S = 1.0

def physical_cores() -> int:
    """Distinct (package, core) ids among the CPUs this process may run on."""
    try:
        cpus = os.sched_getaffinity(0)
        cores = set()
        for cpu in cpus:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        return max(1, len(cores))
    except (OSError, AttributeError):
        return os.cpu_count() or 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="124M,355M", help="comma-separated, from " + ",".join(SIZES))
    p.add_argument("--threads", type=int, default=0, help="threads for every engine (default: physical cores)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="124M only, 3 repeats, 16 decode tokens")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--new-tokens", type=int, default=64, help="decode tokens per measurement")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--out", default="", help="path stem: writes STEM.md and STEM.json")
    p.add_argument("--_rss-child", nargs=2, metavar=("ENGINE", "SIZE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        if "--sizes" not in (argv or sys.argv):
            a.sizes = "124M"
        if "--repeats" not in (argv or sys.argv):
            a.repeats = 3
        if "--new-tokens" not in (argv or sys.argv):
            a.new_tokens = 16
    a.threads = a.threads or physical_cores()
    a.sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    a.engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    for s in a.sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}")
    return a


ARGS = parse_args()
# Thread counts must be fixed before NumPy / OpenBLAS / torch start their pools.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.threads))
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
from random_weights import gpt2_params  # noqa: E402
from read_bandwidth import probe_matrix, read_bandwidth  # noqa: E402
from weight_bytes import weight_bytes_per_token  # noqa: E402

import gpt2gen  # noqa: E402
from gpt2gen import reference  # noqa: E402
from gpt2gen.packing import pack_params  # noqa: E402

# --- weights ---------------------------------------------------------------------------------

def make_params(size: str, seed: int = 0) -> dict:
    n_layer, d, _ = SIZES[size]
    return gpt2_params(n_layer, d, N_VOCAB, N_CTX, seed)


def prompts(n, count=1, seed=1):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, N_VOCAB, n)] for _ in range(count)]


def gpt2gen_runners(params, n_head):
    """gpt2gen's (runner, batch runner) on one params tree."""
    return (lambda p, n, cb: gpt2gen.generate(p, params, n_head, n, on_token=cb),
            lambda batch, n: gpt2gen.generate(batch, params, n_head, n))


# --- plain NumPy with a KV cache ---------------------------------------------------------------

LN_EPS = np.float32(1e-5)


class NumpyKV:
    """picoGPT's math with preallocated per-layer k/v caches; only the last row's logits."""

    def __init__(self, params, n_head):
        self.p, self.n_head = params, n_head
        self.d = params["wte"].shape[1]
        self.hd = self.d // n_head
        self.scale = np.float32(1 / math.sqrt(self.hd))
        self.wte_t = params["wte"].T  # a view
        n_layer = len(params["blocks"])
        self.k = np.zeros((n_layer, n_head, N_CTX, self.hd), np.float32)
        self.v = np.zeros_like(self.k)
        self.length = 0

    @staticmethod
    def layer_norm(x, g, b, eps=LN_EPS):
        mean = x.mean(-1, keepdims=True)
        var = x.var(-1, keepdims=True)
        return g * (x - mean) / np.sqrt(var + eps) + b

    @staticmethod
    def gelu(x):
        return np.float32(0.5) * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi))
                                                  * (x + np.float32(0.044715) * x ** 3)))

    def forward(self, ids):
        p, H, hd = self.p, self.n_head, self.hd
        n, pos0 = len(ids), self.length
        x = p["wte"][ids] + p["wpe"][pos0:pos0 + n]
        for layer, blk in enumerate(p["blocks"]):
            h = self.layer_norm(x, **blk["ln_1"])
            qkv = h @ blk["attn"]["c_attn"]["w"] + blk["attn"]["c_attn"]["b"]
            q, k, v = (qkv[:, i * self.d:(i + 1) * self.d].reshape(n, H, hd).transpose(1, 0, 2)
                       for i in range(3))
            self.k[layer, :, pos0:pos0 + n] = k
            self.v[layer, :, pos0:pos0 + n] = v
            keys, values = self.k[layer, :, :pos0 + n], self.v[layer, :, :pos0 + n]
            s = (q @ keys.transpose(0, 2, 1)) * self.scale  # [H, n, L]
            if n > 1:
                s += np.triu(np.full((n, pos0 + n), np.finfo(np.float32).min, np.float32), pos0 + 1)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att = (s @ values).transpose(1, 0, 2).reshape(n, self.d)
            x = x + (att @ blk["attn"]["c_proj"]["w"] + blk["attn"]["c_proj"]["b"])
            h = self.layer_norm(x, **blk["ln_2"])
            f = self.gelu(h @ blk["mlp"]["c_fc"]["w"] + blk["mlp"]["c_fc"]["b"])
            x = x + (f @ blk["mlp"]["c_proj"]["w"] + blk["mlp"]["c_proj"]["b"])
        self.length += n
        return self.layer_norm(x[-1:], **p["ln_f"])[0] @ self.wte_t

    def generate(self, prompt, n_new, on_token=None):
        self.length = 0
        out, logits = [], self.forward(prompt)
        for i in range(n_new):
            out.append(int(np.argmax(logits)))
            if on_token:
                on_token(out[-1])
            if i + 1 < n_new:
                logits = self.forward([out[-1]])
        return out


# --- transformers ------------------------------------------------------------------------------

class Transformers:
    """GPT2LMHeadModel sharing the same NumPy weight buffers (HF's Conv1D is [in, out] too)."""

    def __init__(self, params, n_head, threads):
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
        torch.set_num_threads(threads)
        self.torch = torch
        n_layer, d = len(params["blocks"]), params["wte"].shape[1]
        cfg = GPT2Config(n_layer=n_layer, n_embd=d, n_head=n_head, vocab_size=N_VOCAB,
                         n_positions=N_CTX, bos_token_id=0, eos_token_id=0)
        with torch.device("meta"):
            model = GPT2LMHeadModel(cfg)
        t = torch.from_numpy
        sd = {"transformer.wte.weight": t(params["wte"]), "transformer.wpe.weight": t(params["wpe"]),
              "transformer.ln_f.weight": t(params["ln_f"]["g"]),
              "transformer.ln_f.bias": t(params["ln_f"]["b"]), "lm_head.weight": t(params["wte"])}
        for i, b in enumerate(params["blocks"]):
            pre = f"transformer.h.{i}."
            for name, ln in (("ln_1", b["ln_1"]), ("ln_2", b["ln_2"])):
                sd[pre + name + ".weight"], sd[pre + name + ".bias"] = t(ln["g"]), t(ln["b"])
            for name, lin in (("attn.c_attn", b["attn"]["c_attn"]), ("attn.c_proj", b["attn"]["c_proj"]),
                              ("mlp.c_fc", b["mlp"]["c_fc"]), ("mlp.c_proj", b["mlp"]["c_proj"])):
                sd[pre + name + ".weight"], sd[pre + name + ".bias"] = t(lin["w"]), t(lin["b"])
        model.load_state_dict(sd, assign=True, strict=False)
        model.tie_weights()
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_meta:
                raise RuntimeError(f"transformers parameter {name} was not set")
        self.model = model.eval()

    def generate(self, prompt, n_new, on_token=None):
        torch = self.torch
        out = []
        with torch.inference_mode():
            res = self.model(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
            for i in range(n_new):
                out.append(int(res.logits[0, -1].argmax()))
                if on_token:
                    on_token(out[-1])
                if i + 1 < n_new:
                    res = self.model(torch.tensor([[out[-1]]]), cache=res.cache,
                                     use_cache=True, logits_to_keep=1)
        return out

    def generate_batch(self, batch, n_new):
        """Greedy tokens for equal-length prompts, generated together."""
        torch = self.torch
        out = []
        with torch.inference_mode():
            res = self.model(torch.tensor(batch), use_cache=True, logits_to_keep=1)
            for i in range(n_new):
                out.append(res.logits[:, -1].argmax(-1))
                if i + 1 < n_new:
                    res = self.model(out[-1][:, None], cache=res.cache,
                                     use_cache=True, logits_to_keep=1)
        return torch.stack(out, 1).tolist()


# --- measurements ----------------------------------------------------------------------------

def timed_generate(fn, prompt, n_new):
    """(TTFT, decode tok/s over the tokens after the first, tokens) from per-token timestamps."""
    stamps = []
    t0 = time.perf_counter()
    tokens = fn(prompt, n_new, lambda tok: stamps.append(time.perf_counter()))
    ttft = stamps[0] - t0
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return ttft, rate, tokens


def seconds(call, *args) -> float:
    """Wall time of one ``call(*args)``."""
    t = time.perf_counter()
    call(*args)
    return time.perf_counter() - t


def measure_engine(name, runner, batch_runner, params, n_head, args, p32, p128, batch8, first_repeat):
    r = {}
    if name == "numpy_full":
        t1 = seconds(reference.generate, p32, params, n_head, 1)
        t128 = seconds(reference.generate, p128, params, n_head, 1)
        r.update(prefill32=32 / t1, prefill128=128 / t128, ttft=t1,
                 decode_ctx128_extrapolated=1 / (t128 * 129 / 128))
        if first_repeat:
            r["gen64"] = seconds(reference.generate, p32, params, n_head, GEN_TOKENS)
            r.update(decode=(GEN_TOKENS - 1) / (r["gen64"] - t1), decode_ctx=f"33-{32 + GEN_TOKENS - 1}")
        return r
    # Prefill: wall time of the prompt up to the first token.
    for key, prompt in (("prefill32", p32), ("prefill128", p128)):
        r[key] = len(prompt) / seconds(runner, prompt, 1, None)
    ttft, rate, tokens = timed_generate(runner, p32, args.new_tokens)
    r.update(ttft=ttft, decode=rate, decode_ctx=f"33-{32 + args.new_tokens - 1}", first_tokens=tokens[:8])
    r["gen64"] = seconds(runner, p32, GEN_TOKENS, None)
    if batch_runner is not None:
        n_b = max(4, args.new_tokens // 2)
        t1 = seconds(batch_runner, batch8, 1)
        tn = seconds(batch_runner, batch8, n_b)
        r["batch8"] = len(batch8) * (n_b - 1) / max(tn - t1, 1e-9)
    return r


def rss_child(engine, size, threads):
    """Run in a fresh process: build weights, one short generation, print peak RSS as JSON."""
    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0
    gpt2gen.set_num_threads(threads)
    params = make_params(size)
    _, _, n_head = SIZES[size]
    after_weights = status("VmRSS")
    p128 = prompts(128)[0]
    if engine in PACKED:
        params = pack_params(params, PACKED[engine])
    if engine.startswith("gpt2gen"):
        gpt2gen.generate(p128, params, n_head, 8)
    elif engine == "numpy_kv":
        NumpyKV(params, n_head).generate(p128, 8)
    elif engine == "numpy_full":
        reference.generate(p128, params, n_head, 2)
    elif engine == "transformers":
        Transformers(params, n_head, threads).generate(p128, 8)
    print(json.dumps({"peak": status("VmHWM"), "weights": after_weights}))


def peak_rss(engine, size, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(threads),
           "--_rss-child", engine, size]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"  peak RSS of {engine} {size} failed: {e}", file=sys.stderr)
        return None


def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def main():
    args = ARGS
    if args._rss_child:
        rss_child(*args._rss_child, args.threads)
        return
    gpt2gen.set_num_threads(args.threads)
    engines = list(args.engines)
    if "transformers" in engines:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            print("transformers/torch not importable: skipped")
            engines.remove("transformers")

    env = {k: os.environ.get(k, "unset") for k in
           ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    print(f"gpt2gen {gpt2gen.__file__} backend={gpt2gen.backend()} threads={args.threads}")
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if env["OPENBLAS_CORETYPE"] == "unset" and env["OPENBLAS_L2_SIZE"] == "unset":
        print("  (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for this run: NumPy/OpenBLAS picks "
              "its own kernels for this CPU)")
    probe_array = probe_matrix()
    bw_runs, loads = [read_bandwidth(probe_array)], [os.getloadavg()[0]]
    print(f"read-bandwidth probe (sgemv, 1 GiB, {args.threads} threads): {bw_runs[0]:.1f} GB/s; "
          f"load average {loads[0]:.2f}")

    results = {"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                        "argv": sys.argv, "threads": args.threads, "backend": gpt2gen.backend(),
                        "repeats": args.repeats, "new_tokens": args.new_tokens,
                        "python": platform.python_version(), "numpy": np.__version__,
                        "machine": platform.processor() or platform.machine(), "env": env},
               "sizes": {}}
    for size in args.sizes:
        n_layer, d, n_head = SIZES[size]
        t = time.perf_counter()
        params = make_params(size)
        engine_params = {name: pack_params(params, fmt_) for name, fmt_ in PACKED.items() if name in engines}
        engine_params.update({name: params for name in engines if name not in PACKED})
        wbytes = {name: weight_bytes_per_token(engine_params[name]) for name in engines}
        print(f"\n{size}: n_layer={n_layer} n_embd={d} n_head={n_head}, {wbytes.get('gpt2gen', 0) / 1e6:.0f} MB "
              f"of float32 weights per decode token (built in {time.perf_counter() - t:.1f} s)")

        runners, batch_runners = {}, {}
        for name in engines:
            if name.startswith("gpt2gen"):
                runners[name], batch_runners[name] = gpt2gen_runners(engine_params[name], n_head)
        if "numpy_kv" in engines:
            runners["numpy_kv"] = NumpyKV(params, n_head).generate
        if "transformers" in engines:
            tf = Transformers(params, n_head, args.threads)
            runners["transformers"], batch_runners["transformers"] = tf.generate, tf.generate_batch
        p32, p128 = prompts(32)[0], prompts(128, seed=2)[0]
        batch8 = prompts(32, count=8, seed=3)
        # Warm up every engine once (page faults, thread pools, lazy imports).
        for name in runners:
            runners[name](p32, 2, None)
        raw = {name: [] for name in engines}
        for rep in range(args.repeats):
            for name in engines:
                time.sleep(SETTLE_S)
                raw[name].append(measure_engine(name, runners.get(name), batch_runners.get(name),
                                                params, n_head, args, p32, p128, batch8, rep == 0))
            bw_runs.append(read_bandwidth(probe_array))
            loads.append(os.getloadavg()[0])
            line = "  ".join(f"{n}={fmt(raw[n][-1].get('decode'))}" for n in engines)
            print(f"  repeat {rep + 1}/{args.repeats}: decode tok/s {line}; probe {bw_runs[-1]:.1f} GB/s,"
                  f" load {loads[-1]:.2f}", flush=True)
        rows = {}
        for name in engines:
            keys = [k for k in raw[name][0] if isinstance(raw[name][0][k], (int, float))]
            row = {k: median([r.get(k) for r in raw[name]]) for k in keys}
            row["decode_ctx"] = raw[name][0]["decode_ctx"]
            row["weight_bytes_per_token"] = wbytes[name]
            if "first_tokens" in raw[name][0]:
                row["first_tokens"] = raw[name][0]["first_tokens"]
            row["decode_gbs"] = row["decode"] * wbytes[name] / 1e9 if row.get("decode") else None
            row["decode_frac_probe"] = (row["decode_gbs"] / statistics.median(bw_runs)
                                        if row["decode_gbs"] else None)
            row["raw"] = raw[name]
            if not args.no_rss:
                rss = peak_rss(name, size, args.threads)
                row["peak_rss_mib"] = rss["peak"] / 2**20 if rss else None
                row["rss_over_weights_mib"] = (rss["peak"] - rss["weights"]) / 2**20 if rss else None
            rows[name] = row
        ref_tokens = rows.get("gpt2gen", {}).get("first_tokens")
        for row in rows.values():
            if "first_tokens" in row and ref_tokens is not None:
                same = 0
                for a, b in zip(row["first_tokens"], ref_tokens):
                    if a != b:
                        break
                    same += 1
                row["agree_with_gpt2gen"] = same
        results["sizes"][size] = {"n_layer": n_layer, "n_embd": d, "n_head": n_head, "engines": rows}
        del params, engine_params, runners, batch_runners

    results["meta"].update(bandwidth_probe_gbs=statistics.median(bw_runs),
                           bandwidth_probe_runs=bw_runs, load_average_1min=loads)
    del probe_array
    md = to_markdown(results)
    print("\n" + md)
    if args.out:
        stem = Path(args.out)
        if stem.suffix in (".md", ".json"):
            stem = stem.with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(md + "\n")
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"wrote {stem}.md and {stem}.json")


def to_markdown(results):
    m = results["meta"]
    lines = [
        f"threads={m['threads']}, gpt2gen backend={m['backend']}, median of {m['repeats']} repeats "
        f"(engines alternate within each repeat), decode = {m['new_tokens']} greedy tokens after a "
        f"32-token prompt; {m['date']}",
        "environment: " + ", ".join(f"{k}={v}" for k, v in m["env"].items()),
        f"read-bandwidth probe (OpenBLAS sgemv over 1 GiB, {m['threads']} threads, once per repeat): "
        f"median {m['bandwidth_probe_gbs']:.1f} GB/s (runs: "
        + ", ".join(f"{b:.1f}" for b in m["bandwidth_probe_runs"]) + "); 1-min load average "
        + ", ".join(f"{x:.1f}" for x in m["load_average_1min"])
        + " (other processes share the 2 cores)",
        "",
        "| size | engine | prefill 32 tok/s | prefill 128 tok/s | TTFT 32 (ms) | decode tok/s (b=1) "
        "| weights GB/s | % of probe | batch-8 decode tok/s | 64-token generation (s) "
        "| peak RSS MiB (over weights) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for size, s in results["sizes"].items():
        for name, r in s["engines"].items():
            dec = fmt(r.get("decode"))
            if name == "numpy_full":
                dec += f" (ctx {r['decode_ctx']}; ≈{fmt(r.get('decode_ctx128_extrapolated'), '.2f')} at ctx 128)"
            rss = ("n/a" if r.get("peak_rss_mib") is None
                   else f"{r['peak_rss_mib']:.0f} (+{r['rss_over_weights_mib']:.0f})")
            frac = r.get("decode_frac_probe")
            lines.append(
                f"| {size} | {name} | {fmt(r.get('prefill32'))} | {fmt(r.get('prefill128'))} | "
                f"{fmt(r['ttft'] * 1e3 if r.get('ttft') else None)} | {dec} | {fmt(r.get('decode_gbs'))} | "
                f"{fmt(frac * 100 if frac else None, '.0f')} | {fmt(r.get('batch8'))} | "
                f"{fmt(r.get('gen64'), '.2f')} | {rss} |")
            if "agree_with_gpt2gen" in r and name != "gpt2gen":
                notes.append(f"{size} {name}: first {r['agree_with_gpt2gen']}/{len(r['first_tokens'])} "
                             "greedy tokens equal gpt2gen's (random weights: near-ties may differ)")
    lines += ["", "numpy_full is picoGPT-style full recompute (gpt2gen.reference.generate): its decode "
              "figure is the 64-token generation's tokens after the first over its time after the first; "
              "its per-token cost grows with the context, the ctx-128 figure is extrapolated from the "
              "128-token prefill time.",
              "weights GB/s = decode tok/s × bytes of weights read per token (blocks, ln_f, wte, one "
              "wpe row; KV cache excluded; packed engines count their packed bytes)."]
    lines += notes
    return "\n".join(lines)


if __name__ == "__main__":
    main()
