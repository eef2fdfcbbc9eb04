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

PRINTED_RESOLVES = 1e-3  # llama-perplexity prints the mean KLD to 6 decimals: 3 digits from here


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


def mean_kld(binary: Path, model: Path, text: Path, base: Path, args) -> float:
    """llama-perplexity --kl-divergence's ``Mean    KLD:  x ± y``. Now and then this build exits
    (status 0) with the end of its output missing, the summary included: run it again then."""
    for _ in range(3):
        output = perplexity(binary, model, text, base, args, "--kl-divergence")
        for line in output.splitlines():
            if line.startswith("Mean    KLD:"):
                return float(line.split(":")[1].split("±")[0])
    raise RuntimeError(f"llama-perplexity printed no mean KLD three times:\n{output[-2000:]}")


class LogProbs:
    """A llama-perplexity --kl-divergence-base file: "_logits_", n_ctx, n_vocab, n_chunk (int32),
    the tokens [n_chunk, n_ctx] (int32), then for each scored position its log-probabilities in
    16 bits: float32 scale and minimum, then n_vocab uint16 q with log p = scale·q + minimum
    (log-probabilities more than 16 below the top one are stored as the minimum)."""

    def __init__(self, path: Path):
        raw = np.memmap(path, np.uint8, mode="r")
        if raw[:8].tobytes() != b"_logits_":
            raise RuntimeError(f"{path} is not a llama-perplexity logits file")
        n_ctx, self.n_vocab, n_chunk = (int(x) for x in raw[8:20].view(np.int32))
        end = 20 + 4 * n_ctx * n_chunk
        self.tokens = raw[20:end].view(np.int32).reshape(n_chunk, n_ctx)
        self.records = raw[end:].view(np.uint16).reshape(-1, 2 * ((self.n_vocab + 1) // 2) + 4)

    def log_probs(self, rows: slice) -> np.ndarray:
        """float64 [positions, n_vocab], computed in float32 as llama-perplexity does."""
        records = self.records[rows]
        scale, minimum = np.ascontiguousarray(records[:, :4]).view(np.float32).T
        return (scale[:, None] * records[:, 4:4 + self.n_vocab] + minimum[:, None]).astype(np.float64)


def stored_kl(base: LogProbs, candidate: LogProbs, block: int = 64) -> float:
    """Mean KL(base ‖ candidate) from two stored files, as llama-perplexity sums it (over the base
    log-probabilities above -16), to more digits than its own 6 decimals, which cannot resolve
    f16 on these weights. The candidate's log-probabilities more than 16 below its top one are
    stored as that floor, so a large KL comes out too small."""
    if not np.array_equal(base.tokens, candidate.tokens):
        raise RuntimeError("llama-perplexity tokenized the text differently for two models")
    kls = []
    for start in range(0, len(base.records), block):
        a, b = base.log_probs(slice(start, start + block)), candidate.log_probs(slice(start, start + block))
        kls.append(np.where(a > -16, np.exp(a) * (a - b), 0.0).sum(axis=-1))
    return float(np.mean(np.concatenate(kls)))


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
    print("| weights | gpt2gen format | KL(fp32‖gpt2gen) | llama.cpp type | KL(f32‖llama.cpp) "
          "| (its printed Mean KLD; from the stored log-probabilities) | gpt2gen ≤ llama.cpp |")
    print("|---|---|---|---|---|---|---|")
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
            base_file = work / f"{kind}-f32.logprobs"
            perplexity(binary, f32, text, base_file, args)
            base = LogProbs(base_file)
            for fmt, peer in [(None, "f32"), *pairs]:
                model = llama_cpp_tools.quantized(quantizer, f32, peer)
                own_file = work / f"{kind}-{peer}-again.logprobs" if peer == "f32" else work / f"{kind}-{peer}.logprobs"
                perplexity(binary, model, text, own_file, args)
                row = {"weights": kind, "format": fmt, "llama_type": peer,
                       "llama_kl_stored": stored_kl(base, LogProbs(own_file)),
                       "llama_perplexity_kld": mean_kld(binary, model, text, base_file, args)}
                # Its printed figure where 6 decimals resolve it; the stored one below that (the
                # stored log-probabilities clip 16 below the top one, which large KLs reach).
                row["llama_kl"] = (row["llama_perplexity_kld"] if row["llama_perplexity_kld"] >= PRINTED_RESOLVES
                                   else row["llama_kl_stored"])
                if fmt:
                    row["gpt2gen_kl"] = gpt2gen_kl(params, gpt2gen.pack_params(params, fmt), shape["n_head"],
                                                   base.tokens, log_softmax)
                    row["pass"] = row["gpt2gen_kl"] <= row["llama_kl"]
                rows.append(row)
                print(f"| {kind} | {fmt or '–'} | " + (f"{row['gpt2gen_kl']:.2e}" if fmt else "–")
                      + f" | {peer if fmt else 'f32 again (the same run twice)'} | {row['llama_kl']:.2e} "
                      f"| {row['llama_perplexity_kld']:.6f}; {row['llama_kl_stored']:.2e} | "
                      + ("–" if not fmt else "PASS" if row["pass"] else "FAIL") + " |", flush=True)
    print(f"\n(KL(f32‖llama.cpp) is llama-perplexity's printed mean KLD from {PRINTED_RESOLVES:g} up; below, where "
          "its 6 decimals resolve little, it is computed from the 16-bit log-probabilities both runs stored, "
          "summed as llama-perplexity does: below ~1e-7 that is at the storage's resolution and may come out "
          "negative.)")
    return rows
