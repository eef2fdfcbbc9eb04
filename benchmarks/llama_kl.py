"""llama.cpp's column of the accuracy table (eval_precision.py --llama): each gpt2gen format's mean
KL to float32 beside that of the llama.cpp type it is raced against, on the same weights and tokens.

For each kind of weights, the float32 params are written as f32 GGUF (with a small GPT-2 BPE
vocabulary, the tests' ``write_tokenizer_files``) and the raced types made by llama-quantize.
``llama-perplexity --kl-divergence-base FILE`` on the f32 model saves its log-probabilities over
a text of random words, then ``--kl-divergence`` on each type prints its mean KLD to them. The
tokens llama.cpp ran are read back from FILE, and gpt2gen's KL(fp32 ‖ format) is computed on
exactly those tokens and positions (llama-perplexity scores the second half of each chunk). llama-perplexity runs with gpt2gen's
thread count.
llama.cpp stores the base log-probabilities in 16 bits: the f32 model against its own base
shows that floor.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import llama_cpp_tools
import numpy as np

import gpt2gen
from gpt2gen import _core
from gpt2gen.packing import FORMATS


def add_arguments(parser) -> None:
    group = parser.add_argument_group("llama.cpp column")
    group.add_argument("--llama", action="store_true",
                       help="add llama.cpp's KL for the type each format is raced against (llama-perplexity)")
    llama_cpp_tools.add_arguments(group, "llama-perplexity")
    group.add_argument("--kl-ctx", type=int, default=128, help="llama-perplexity's chunk length (default 128)")
    group.add_argument("--kl-chunks", type=int, default=8, help="chunks scored (default 8)")


def random_text(n_words: int, seed: int = 0) -> str:
    """Random lowercase words: the tests' vocabulary merges letter pairs, so ~2 letters a token."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return " ".join("".join(rng.choice(letters, rng.integers(1, 9))) for _ in range(n_words)) + "\n"


def perplexity(binary: Path, model: Path, text: Path, base: Path, args, *extra) -> str:
    command = [str(binary), "-m", str(model), "-f", str(text), "-c", str(args.kl_ctx), "-b", str(args.kl_ctx),
               "--chunks", str(args.kl_chunks), "-t", str(gpt2gen.num_threads()), "--kl-divergence-base", str(base), *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout + done.stderr


def mean_kld(output: str) -> float:
    """The value of llama-perplexity's ``Mean    KLD:  x ± y`` line."""
    for line in output.splitlines():
        if line.startswith("Mean    KLD:"):
            return float(line.split(":")[1].split("±")[0])
    raise RuntimeError(f"llama-perplexity printed no mean KLD:\n{output[-2000:]}")


def base_tokens(base: Path) -> np.ndarray:
    """The tokens [n_chunk, n_ctx] a --kl-divergence-base file was made from (its header:
    "_logits_", n_ctx, n_vocab, n_chunk as int32, then the tokens as int32)."""
    with open(base, "rb") as f:
        if f.read(8) != b"_logits_":
            raise RuntimeError(f"{base} is not a llama-perplexity logits file")
        n_ctx, _, n_chunk = np.fromfile(f, np.int32, 3)
        return np.fromfile(f, np.int32, int(n_ctx) * int(n_chunk)).reshape(n_chunk, n_ctx)


def gpt2gen_kl(params, packed, n_head, tokens, log_softmax) -> float:
    """Mean KL(fp32 ‖ packed) over the positions llama-perplexity scores: in each chunk, the
    logits of positions n_ctx/2 … n_ctx-2 (each predicts the next token)."""
    reference, candidate = _core.Model(params, n_head), _core.Model(packed, n_head)
    first = tokens.shape[1] // 2
    kls = []
    for chunk in tokens:
        ids = [int(t) for t in chunk]
        a = log_softmax(reference.forward(ids)[first:-1])
        b = log_softmax(candidate.forward(ids)[first:-1])
        kls.append(np.sum(np.exp(a) * (a - b), axis=-1))
    return float(np.mean(np.concatenate(kls)))


def compare(args, shape: dict, make_params, log_softmax) -> list:
    """Prints the table (one row per raced pair and kind of weights) and returns its rows."""
    sys.path.insert(0, str(llama_cpp_tools.ROOT / "tests"))
    from conftest import write_tokenizer_files

    binary = llama_cpp_tools.find_tool("llama-perplexity", args.llama_perplexity, args.build_llama,
                                       "eval_precision")
    quantizer = llama_cpp_tools.sibling_tool(binary, "llama-quantize", args.build_llama, "eval_precision")
    pairs = [(fmt, llama_cpp_tools.PEER_TYPE[fmt]) for fmt in FORMATS if fmt in llama_cpp_tools.PEER_TYPE]
    print(f"\nllama.cpp beside gpt2gen: mean KL to each engine's own float32, on the same weights and the "
          f"same tokens ({args.kl_chunks} chunks of {args.kl_ctx}, the second half of each scored)\n")
    print("| weights | gpt2gen format | KL(fp32‖gpt2gen) | llama.cpp type | KL(f32‖llama.cpp) | gpt2gen ≤ llama.cpp |")
    print("|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpt2gen-llama-kl-") as tmp:
        work = Path(tmp)
        vocab, merge_pairs = write_tokenizer_files(work, shape["n_vocab"])
        tokens_list = sorted(vocab, key=vocab.get)
        merges = [f"{a} {b}" for a, b in merge_pairs]
        text = work / "text.txt"
        text.write_text(random_text(args.kl_ctx * args.kl_chunks), encoding="utf-8")
        for kind in ("random", "structured"):
            params = make_params(kind, shape)
            f32 = llama_cpp_tools.write_gguf(work / f"{kind}-f32.gguf", params, shape["n_head"], tokens_list, merges)
            base = work / f"{kind}.kld"
            perplexity(binary, f32, text, base, args)
            tokens = base_tokens(base)
            floor = mean_kld(perplexity(binary, f32, text, base, args, "--kl-divergence"))
            rows.append({"weights": kind, "format": None, "llama_type": "f32", "llama_kl": floor})
            print(f"| {kind} | – | – | f32 (its own base: the 16-bit storage floor) | {floor:.2e} | – |", flush=True)
            for fmt, peer in pairs:
                model = llama_cpp_tools.quantized(quantizer, f32, peer)
                theirs = mean_kld(perplexity(binary, model, text, base, args, "--kl-divergence"))
                ours = gpt2gen_kl(params, gpt2gen.pack_params(params, fmt), shape["n_head"], tokens, log_softmax)
                rows.append({"weights": kind, "format": fmt, "gpt2gen_kl": ours, "llama_type": peer,
                             "llama_kl": theirs, "pass": ours <= theirs})
                print(f"| {kind} | {fmt} | {ours:.2e} | {peer} | {theirs:.2e} | "
                      f"{'PASS' if ours <= theirs else 'FAIL'} |", flush=True)
    return rows
