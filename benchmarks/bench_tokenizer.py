"""Encode 1 MB of English-like text with gpt2gen's tokenizer and with transformers', in one run.

    PYTHONPATH=python python benchmarks/bench_tokenizer.py [--mb 1] [--gpt2-dir DIR]

The vocabulary is GPT-2's own when --gpt2-dir (or $GPT2GEN_GPT2_DIR) names a folder with
vocab.json and merges.txt; otherwise one is trained here with the tokenizers library. Ours is
timed twice: "cold" (a fresh tokenizer, empty word cache) and "warm" (same text again). Every
tokenizer must produce the same ids, or the run fails.
"""

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from gpt2gen.tokenizer import EOT, Tokenizer


def english_like_text(n_bytes: int, seed: int = 0) -> str:
    """Sentences over 20k made-up words with Zipf frequencies (as many word types as real prose)."""
    rng = random.Random(seed)
    syllables = "th e an in er re on at en nd ti es or te of ed is it al ar st to nt ng se ha ou le ve co me de".split()
    words = ["".join(rng.choices(syllables, k=rng.choice((1, 1, 2, 2, 2, 3, 3, 4)))) for _ in range(20_000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    extras = ["I'm", "don't", "it's", "they'll", "1999", "3.5", "(see", "above)", "\"quoted\"", "--"]
    parts, size = [], 0
    while size < n_bytes:
        sentence = rng.choices(words, weights, k=rng.randint(4, 25)) + rng.choices(extras, k=rng.randint(0, 2))
        part = " ".join(sentence).capitalize() + rng.choice([". ", ", ", "? ", ".\n\n", ".\n"])
        parts.append(part)
        size += len(part)
    return "".join(parts)[:n_bytes]


def trained_vocabulary(text: str, directory: Path, vocab_size: int = 32_000) -> tuple[Path, Path]:
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([text[i : i + 10_000] for i in range(0, len(text), 10_000)], trainer)
    tok.model.save(str(directory))
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    vocab[EOT] = len(vocab)  # last, as in GPT-2
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return directory / "vocab.json", directory / "merges.txt"


def timed(encode, text: str) -> tuple[list[int], float]:
    start = time.perf_counter()
    ids = encode(text)
    return ids, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0, help="megabytes of text to encode")
    parser.add_argument("--gpt2-dir", default=os.environ.get("GPT2GEN_GPT2_DIR"))
    args = parser.parse_args()

    text = english_like_text(int(args.mb * 1_000_000))
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpt2_dir:
            vocab_file, merges_file = Path(args.gpt2_dir) / "vocab.json", Path(args.gpt2_dir) / "merges.txt"
            source = f"GPT-2 vocabulary from {args.gpt2_dir}"
        else:
            # Trained on other text than the one timed, so the timed text is not its training set.
            vocab_file, merges_file = trained_vocabulary(english_like_text(1_000_000, seed=1), Path(tmp))
            source = "a vocabulary trained here with tokenizers"

        ours = Tokenizer.from_files(vocab_file, merges_file)
        results = {}
        results["gpt2gen (cold cache)"] = timed(ours.encode, text)
        results["gpt2gen (warm cache)"] = timed(ours.encode, text)
        try:
            import transformers
        except ImportError:
            print("transformers is not installed: timing gpt2gen only")
        else:
            slow = transformers.GPT2Tokenizer(str(vocab_file), str(merges_file))
            fast = transformers.GPT2TokenizerFast(str(vocab_file), str(merges_file))
            # From transformers 5 on there is no Python GPT-2 tokenizer: both names are the Rust one.
            same = type(slow) is type(fast)
            note = " (Rust: is Fast here)" if same else " (slow, Python)"
            results["transformers GPT2Tokenizer" + note] = timed(slow.encode, text)
            results["transformers GPT2TokenizerFast"] = timed(fast.encode, text)

    print(f"{len(text.encode('utf-8')) / 1e6:.2f} MB of English-like text, {source} ({ours.n_vocab} ids)")
    reference_ids = results["gpt2gen (cold cache)"][0]
    baseline = results["gpt2gen (cold cache)"][1]
    for name, (ids, seconds) in results.items():
        assert ids == reference_ids, f"{name} gives different ids"
        print(f"  {name:50s} {seconds:7.3f} s  {len(ids) / seconds / 1e6:6.2f} M tokens/s  "
              f"{seconds / baseline:5.2f}x the time of gpt2gen (cold)")
    print(f"  {len(reference_ids)} tokens, identical across all tokenizers")


if __name__ == "__main__":
    main()
