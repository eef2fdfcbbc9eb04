"""Load time and resident memory of gpt2gen.checkpoint on a GPT-2 124M-shaped checkpoint.

Writes a random checkpoint with the Hub's ``gpt2`` tensor names, shapes and buffers
(``model.safetensors`` ~548 MB, ``config.json``, and a synthetic 50257-id tokenizer with 50000
merges) into a temporary directory, in a child process so that building it leaves no memory
behind in the measuring process; then measures, in this process:

* ``load_checkpoint`` (weights + hparams) and ``load_pretrained`` (plus the tokenizer) wall time,
  best and median of ``--repeat`` runs (the file is in the page cache: it was just written);
* RSS, RssAnon (private copies) and RssFile (mapped file pages) from /proc/self/status before
  loading, after loading, and after touching every weight (a sum over each array);
* for comparison, the same for ``safetensors.numpy.load_file``, which copies every tensor.

Run: ``PYTHONPATH=python python benchmarks/bench_load.py`` (``--dir D`` reuses/keeps a checkpoint).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gpt2gen import checkpoint
from gpt2gen.tokenizer import bytes_to_unicode


def build(model_dir: Path, n_layer: int, n_embd: int, n_head: int, n_vocab: int, n_ctx: int, seed: int = 0) -> None:
    """The checkpoint, written with NumPy and the safetensors package (no torch needed)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)

    def rand(*shape, loc=0.0):
        return (loc + 0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32, copy=False)

    E = n_embd
    tensors = {"wte.weight": rand(n_vocab, E), "wpe.weight": rand(n_ctx, E)}
    mask = np.tril(np.ones((n_ctx, n_ctx), np.float32))[None, None]
    for i in range(n_layer):
        h = f"h.{i}."
        tensors.update({
            h + "ln_1.weight": rand(E, loc=1.0), h + "ln_1.bias": rand(E),
            h + "attn.bias": mask,  # the causal-mask buffer the Hub's gpt2 file carries
            h + "attn.c_attn.weight": rand(E, 3 * E), h + "attn.c_attn.bias": rand(3 * E),
            h + "attn.c_proj.weight": rand(E, E), h + "attn.c_proj.bias": rand(E),
            h + "ln_2.weight": rand(E, loc=1.0), h + "ln_2.bias": rand(E),
            h + "mlp.c_fc.weight": rand(E, 4 * E), h + "mlp.c_fc.bias": rand(4 * E),
            h + "mlp.c_proj.weight": rand(4 * E, E), h + "mlp.c_proj.bias": rand(E),
        })
    tensors["ln_f.weight"], tensors["ln_f.bias"] = rand(E, loc=1.0), rand(E)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "vocab_size": n_vocab, "n_positions": n_ctx, "n_embd": n_embd,
        "n_head": n_head, "n_layer": n_layer, "bos_token_id": n_vocab - 1, "eos_token_id": n_vocab - 1,
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    # GPT-2's tokenizer size: 256 byte symbols + merges of symbol pairs + <|endoftext|>.
    table = bytes_to_unicode()
    symbols = [table[b] for b in range(256)]
    n_merges = n_vocab - 257
    merges = [(a, b) for a in symbols for b in symbols][:n_merges]
    vocab = {t: i for i, t in enumerate(symbols + [a + b for a, b in merges] + ["<|endoftext|>"])}
    (model_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (model_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def memory() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def leaves(params):
    if isinstance(params, dict):
        for v in params.values():
            yield from leaves(v)
    elif isinstance(params, list):
        for v in params:
            yield from leaves(v)
    else:
        yield params


def fmt(mem: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:8.1f} MB" for k, v in mem.items())


def delta(after: dict, before: dict) -> str:
    return "  ".join(f"{k} {after[k] - before[k]:+8.1f} MB" for k in after)


def timed(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        del result
        gc.collect()
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="checkpoint directory (built there if it has no model.safetensors)")
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-vocab", type=int, default=50257)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gpt2gen-bench-load-")
        args.dir = Path(tmp.name) / "gpt2-124M-random"
    shape = [args.n_layer, args.n_embd, args.n_head, args.n_vocab, args.n_ctx]
    if args.build_only:
        build(args.dir, *shape)
        return
    if not (args.dir / "model.safetensors").is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build-only", "--dir", str(args.dir)]
                       + [f"--{k}={v}" for k, v in zip(("n-layer", "n-embd", "n-head", "n-vocab", "n-ctx"), shape)],
                       check=True)
        print(f"built {args.dir} in {time.perf_counter() - start:.1f} s")

    file_mb = (args.dir / "model.safetensors").stat().st_size / 2**20
    print(f"model.safetensors: {file_mb:.1f} MB  (n_layer={args.n_layer}, n_embd={args.n_embd}, "
          f"n_head={args.n_head}, n_vocab={args.n_vocab}, n_ctx={args.n_ctx})")

    gc.collect()
    m0 = memory()
    print(f"before load           {fmt(m0)}")
    start = time.perf_counter()
    hparams, params = checkpoint.load_checkpoint(args.dir)
    first = time.perf_counter() - start
    m1 = memory()
    print(f"after load_checkpoint {fmt(m1)}   ({delta(m1, m0)})")
    start = time.perf_counter()
    total = sum(float(a.sum(dtype=np.float64)) for a in leaves(params))
    touch = time.perf_counter() - start
    m2 = memory()
    weight_mb = sum(a.nbytes for a in leaves(params)) / 2**20
    print(f"after touching all    {fmt(m2)}   ({delta(m2, m0)})")
    print(f"weights {weight_mb:.1f} MB; touching every weight took {touch:.2f} s (checksum {total:.3f})")
    del params
    gc.collect()

    best, median = timed(lambda: checkpoint.load_checkpoint(args.dir), args.repeat)
    print(f"load_checkpoint: first {first * 1e3:.1f} ms, best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms "
          f"of {args.repeat}")
    try:
        from gpt2gen.tokenizer import Tokenizer  # noqa: F401
    except ImportError as e:
        print(f"load_pretrained: skipped, no tokenizer ({e})")
    else:
        best, median = timed(lambda: checkpoint.load_pretrained(args.dir), args.repeat)
        print(f"load_pretrained (with the 50000-merge tokenizer): best {best * 1e3:.1f} ms, "
              f"median {median * 1e3:.1f} ms of {args.repeat}")

    try:
        from safetensors.numpy import load_file
    except ImportError:
        return
    gc.collect()
    m3 = memory()
    start = time.perf_counter()
    copied = load_file(str(args.dir / "model.safetensors"))
    elapsed = time.perf_counter() - start
    m4 = memory()
    print(f"for comparison, safetensors.numpy.load_file (copies): {elapsed * 1e3:.1f} ms, ({delta(m4, m3)})")
    del copied
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
