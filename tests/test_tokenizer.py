"""GPT-2's byte-level BPE tokenizer (gpt2gen.tokenizer) against Hugging Face's.

Vocabularies are trained here with the `tokenizers` library on a generated corpus, written
as vocab.json / merges.txt, and loaded both by transformers.GPT2Tokenizer and by ours; the
ids must be identical. The round-trip and streaming tests need neither library: they use a
vocabulary trained by a few lines of Python below.
"""

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2gen.tokenizer import EOT, GPT2_SPLIT_PATTERN, Tokenizer, bpe, bytes_to_unicode

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Hand-picked strings; each must tokenize exactly as transformers does it.
CASES = [
    "",
    "Hello world",
    " Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "a  b",
    "  ",
    " ",
    "\n\n\n",
    "trailing spaces   ",
    "   leading spaces",
    "tabs\tand\t\ttabs \t mixed",
    "line\nbreaks\r\nand\rreturns\n",
    "para one.\n\n  para two with indent\n\t\tcode()",
    "I'm they'll don't we've you're she'd it's 's 're",
    "'S 'T 'RE I'M DON'T",
    "''s '''",
    "rock 'n' roll o'clock",
    "0 7 42 2024 3.14159 1,000,000 123456789012345678901234567890",
    "phone: +1 (555) 010-9999, id #A12b34",
    "!!! ??? ... --- *** ### $$$ %%% &&& @@@ ^^^ ~~~ ``` ===",
    "<html><body class=\"x\">a &amp; b</body></html>",
    "def f(x):\n    return {'a': [1, 2, 3]}\n",
    "émoji 😀 😀😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇩🇪 ❤️",
    "日本語のテキストです。中文文本。한국어 텍스트.",
    "e\u0301 n\u0303 a\u0308\u0304 Z\u0351\u0352\u0353 combining",
    "עברית וערבית: مرحبا بالعالم 123",
    "Ελληνικά русский язык ქართული",
    "zero\u200bwidth\u200djoin\ufeffbom \u00a0nbsp \u3000ideo",
    "\x00\x01\x1c\x1f\x7f\x85 controls",
    "\U0010ffff\U000e0001 \ue000 private",
    "x\u088fx \U000323b0\U00011de0 1\U00016ff4",  # Unicode 17 letters and numbers
    EOT,
    EOT + EOT,
    "text" + EOT + "text",
    "a " + EOT + " b",
    "a  " + EOT + "  b",
    "\n" + EOT + "\n",
    EOT + " Hello",
    "Hello " + EOT,
    "<|endoftext|",
    "<|ENDOFTEXT|>",
    "<|endof" + EOT + "text|>",
    "I'm" + EOT + "'s",
]

# Fragments that hypothesis glues together, so odd neighbours (space before a special token,
# apostrophes before letters, whitespace runs before words) come up often.
FRAGMENTS = [EOT, " ", "  ", "\t", "\n", "\r\n", "'", "'s", "'S", "'ll", "a", "A", "1", "!", ".",
             "é", "😀", "👍🏽", "日本", "\u0301", "\u200d", "<|", "|>"]
mixed_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=20).map("".join)


def make_corpus(n_chars: int = 300_000, seed: int = 0) -> str:
    """English-like text with numbers, punctuation, whitespace and a share of other scripts."""
    rng = random.Random(seed)
    syllables = "th e an in er re on at en nd ti es or te of ed is it al ar st to nt ng se ha ou le ve co".split()
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(2000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf, like real word counts
    extras = ["I'm", "don't", "they'll", "it's", "we've", "you're", "he'd", "2024", "3.14", "1,000",
              "日本語", "中文", "한국어", "Ελληνικά", "русский", "مرحبا", "שלום", "café", "naïve",
              "😀", "👍🏽", "👨‍👩‍👧", "(x)", "[1]", "--", "...", "\t", "    "]
    ends = [". ", ", ", "! ", "? ", ".\n", ".\n\n", "; ", ": ", " - "]
    parts, size = [], 0
    while size < n_chars:
        sentence = rng.choices(words, weights, k=rng.randint(3, 15))
        sentence += rng.choices(extras, k=rng.randint(0, 2))
        rng.shuffle(sentence)
        part = " ".join(sentence).capitalize() + rng.choice(ends)
        parts.append(part)
        size += len(part)
    return "".join(parts)


# ---------------------------------------------------------------- pure (no HF libraries)


def train_pure(text: str, n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small textbook BPE trainer: repeatedly merge the most frequent adjacent pair."""
    table = bytes_to_unicode()
    counts: dict[tuple[str, ...], int] = {}
    for word in GPT2_SPLIT_PATTERN.findall(text):
        symbols = tuple(table[b] for b in word.encode("utf-8"))
        counts[symbols] = counts.get(symbols, 0) + 1
    merges = []
    for _ in range(n_merges):
        pairs: dict[tuple[str, str], int] = {}
        for symbols, count in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = max(pairs, key=pairs.get)
        merges.append(best)
        merged_counts = {}
        for symbols, count in counts.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged_counts[tuple(out)] = count
        counts = merged_counts
    tokens = list(table.values()) + [a + b for a, b in merges]
    encoder = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return encoder, merges


def textbook_bpe(word: str, ranks: dict) -> list[str]:
    """OpenAI's formulation: merge every occurrence of the best pair, then look again."""
    symbols = list(word)
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        out, i = [], 0
        while i < len(symbols):
            if tuple(symbols[i : i + 2]) == best:
                out.append(best[0] + best[1])
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


@pytest.fixture(scope="session")
def pure_vocab():
    return train_pure(make_corpus(20_000, seed=1), n_merges=150)


@pytest.fixture(scope="session")
def pure_tok(pure_vocab):
    encoder, merges = pure_vocab
    return Tokenizer({**encoder, EOT: len(encoder)}, merges)


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_properties(pure_tok, pure_vocab):
    assert pure_tok.n_vocab == len(pure_vocab[0]) + 1
    assert pure_tok.eot_token == pure_tok.eos_token_id == len(pure_vocab[0])
    assert pure_tok.encode("a" + EOT + "b") == pure_tok.encode("a") + [pure_tok.eot_token] + pure_tok.encode("b")


def test_vocabulary_without_eot_has_no_special_token(pure_vocab):
    tok = Tokenizer(*pure_vocab)
    assert tok.eot_token is None and tok.eos_token_id is None
    ids = tok.encode("x" + EOT)
    assert len(ids) > 2 and tok.decode(ids) == "x" + EOT


@settings(SETTINGS, max_examples=500)
@given(st.text() | mixed_text)
def test_round_trip(pure_tok, text):
    assert pure_tok.decode(pure_tok.encode(text)) == text


@settings(SETTINGS, max_examples=300)
@given(st.lists(st.sampled_from(FRAGMENTS[1:]) | st.text(alphabet="abcdeé😀 ", max_size=8), max_size=6).map("".join))
def test_bpe_matches_the_textbook_algorithm(pure_vocab, text):
    encoder, merges = pure_vocab
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    table = bytes_to_unicode()
    spelt = "".join(table[b] for b in text.encode("utf-8"))
    assert bpe(spelt, ranks) == textbook_bpe(spelt, ranks)


def test_decode_rejects_ids_outside_the_vocabulary(pure_tok):
    for bad in (-1, pure_tok.n_vocab, 10**9):
        with pytest.raises(ValueError, match=str(bad)):
            pure_tok.decode([1, bad])
        with pytest.raises(ValueError, match=str(bad)):
            pure_tok.decoder().push(bad)


def test_decode_replaces_invalid_utf8(pure_tok):
    euro = pure_tok.encode("€")  # three bytes; the byte-level alphabet has one token per byte
    table = bytes_to_unicode()
    byte_id = {b: pure_tok.encoder[c] for b, c in table.items()}
    assert pure_tok.decode([byte_id[0xE2], byte_id[0x82]]) == "\ufffd"
    assert pure_tok.decode([byte_id[0xE2], byte_id[ord("A")]]) == "\ufffdA"
    assert pure_tok.decode([byte_id[0xFF]] + euro) == "\ufffd€"


def test_streaming_never_splits_a_character(pure_tok):
    text = "👨‍👩‍👧 日本語 é 😀"
    dec = pure_tok.decoder()
    pieces = [dec.push(i) for i in pure_tok.encode(text)] + [dec.flush()]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


@settings(SETTINGS, max_examples=500)
@given(st.data())
def test_streaming_equals_decode(pure_tok, data):
    # Mostly single-byte tokens above 0x7F, so partial and invalid UTF-8 is the common case.
    byte_ids = [pure_tok.encoder[c] for b, c in bytes_to_unicode().items() if b >= 0x80]
    any_id = st.integers(0, pure_tok.n_vocab - 1)
    ids = data.draw(st.lists(st.sampled_from(byte_ids) | any_id, max_size=40))
    dec = pure_tok.decoder()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == pure_tok.decode(ids)


def test_from_files_formats(tmp_path, pure_vocab):
    encoder, merges = pure_vocab
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    lines = [f"{a} {b}" for a, b in merges]
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(lines) + "\n\n\n", encoding="utf-8")
    (tmp_path / "bare.txt").write_text("\r\n".join(lines), encoding="utf-8")
    text = "Hello there, I'm a test 123 😀"
    expected = Tokenizer(encoder, merges).encode(text)
    assert Tokenizer.from_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe").encode(text) == expected
    assert Tokenizer.from_files(tmp_path / "encoder.json", tmp_path / "bare.txt").encode(text) == expected
    (tmp_path / "broken.txt").write_text("a b c\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        Tokenizer.from_files(tmp_path / "encoder.json", tmp_path / "broken.txt")


# ---------------------------------------------------------------- against Hugging Face


def train_vocab(directory: Path, corpus: str, vocab_size: int, eot: str) -> Path:
    """Train a byte-level BPE with `tokenizers`; eot: "first", "last" (as in GPT-2) or "none"."""
    tokenizers = pytest.importorskip("tokenizers", reason="training vocabularies needs the tokenizers library")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT] if eot == "first" else [],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus[i : i + 10_000] for i in range(0, len(corpus), 10_000)], trainer)
    directory.mkdir(parents=True)
    tok.model.save(str(directory))
    if eot == "last":
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        vocab[EOT] = len(vocab)
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def corpus():
    return make_corpus()


@pytest.fixture(scope="session", params=[(500, "first"), (5000, "last")], ids=["small-eot-first", "large-eot-last"])
def vocab_dir(request, tmp_path_factory, corpus):
    size, eot = request.param
    return train_vocab(tmp_path_factory.mktemp("vocab") / f"v{size}", corpus, size, eot)


@pytest.fixture(scope="session")
def ours(vocab_dir):
    return Tokenizer.from_files(vocab_dir / "vocab.json", vocab_dir / "merges.txt")


@pytest.fixture(scope="session")
def theirs(vocab_dir):
    transformers = pytest.importorskip("transformers", reason="comparing with transformers' GPT-2 tokenizer")
    return transformers.GPT2Tokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))


def test_trained_vocabulary_is_realistic(ours, theirs):
    assert ours.n_vocab == len(theirs) > 400
    assert ours.eot_token == theirs.eos_token_id == theirs.convert_tokens_to_ids(EOT)
    assert len(ours.encode("the and 日本語")) < len("the and 日本語".encode())  # merges apply


@pytest.mark.parametrize("text", CASES, ids=range(len(CASES)))
def test_cases_match_transformers(ours, theirs, text):
    assert ours.encode(text) == theirs.encode(text)


def test_fast_class_agrees(ours, vocab_dir):
    transformers = pytest.importorskip("transformers", reason="comparing with transformers' GPT-2 tokenizer")
    fast = transformers.GPT2TokenizerFast(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))
    for text in CASES:
        assert ours.encode(text) == fast.encode(text), text


def test_corpus_matches_transformers(ours, theirs, corpus):
    other = make_corpus(100_000, seed=7)  # the same language, but text not seen in training
    for text in (corpus[:100_000], other, other.replace(". ", ". " + EOT + " ")):
        assert ours.encode(text) == theirs.encode(text)


def test_long_words_match_transformers(ours, theirs):
    rng = random.Random(3)
    for text in ("=" * 20_000, " " * 5_000 + "x", "".join(rng.choices("thean", k=20_000)), "日本語" * 3_000):
        assert ours.encode(text) == theirs.encode(text)


@settings(SETTINGS, max_examples=1000)
@given(st.text() | mixed_text)
def test_random_text_matches_transformers(ours, theirs, text):
    assert ours.encode(text) == theirs.encode(text)


def test_every_code_point_is_classified_like_tokenizers():
    """Letters, numbers, whitespace and the rest, for all of Unicode, as the Rust pre-tokenizer sees them.

    The pattern's classes are gpt2gen's Unicode 16.0 tables, the reference's Oniguruma's; a
    change of Unicode version on either side shows here. Each class is written as one run (after a space): it must
    come back as the same single word from both.
    """
    tokenizers = pytest.importorskip("tokenizers", reason="comparing with the tokenizers library")
    import re

    from gpt2gen._unicode_tables import LETTERS, NUMBERS, SPACES

    pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    table = bytes_to_unicode()
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    classes = {name: "".join(re.findall(cls, everything))
               for name, cls in [("letter", f"[{LETTERS}]"), ("number", f"[{NUMBERS}]"),
                                 ("other", f"[^{SPACES}{LETTERS}{NUMBERS}]"), ("space", f"[{SPACES}]")]}
    assert sum(map(len, classes.values())) == len(everything)
    for name, run in classes.items():
        text = run if name == "space" else " " + run
        expected = [word for word, _ in pre_tokenizer.pre_tokenize_str(text)]
        got = [w.encode("utf-8").decode("latin-1").translate(table) for w in GPT2_SPLIT_PATTERN.findall(text)]
        assert len(got) == 1 and got == expected, f"{name}: tokenizers splits the run into {len(expected)} words"


@settings(SETTINGS, max_examples=500)
@given(st.data())
def test_decode_matches_transformers(ours, theirs, data):
    byte_ids = [ours.encoder[c] for b, c in bytes_to_unicode().items() if b >= 0x80]
    ids = data.draw(st.lists(st.sampled_from(byte_ids + [ours.eot_token]) | st.integers(0, ours.n_vocab - 1), max_size=30))
    assert ours.decode(ids) == theirs.decode(ids)


def test_bytes_missing_from_the_vocabulary_are_dropped_like_transformers(tmp_path):
    """A vocabulary without the whole byte alphabet: transformers drops what it cannot spell."""
    transformers = pytest.importorskip("transformers", reason="comparing with transformers' GPT-2 tokenizer")
    table = bytes_to_unicode()
    symbols = [table[b] for b in range(99)]  # bytes 0-98: no "c".."z", "~", nothing above 0x7F
    merges = [("a", "b"), ("Ġ", "a")]
    vocab = {token: i for i, token in enumerate(symbols + ["ab", "Ġa", EOT])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    ours = Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    theirs = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in ["a?b", "azb", " za", "xyz", "é ab~" + EOT, "日本"] + CASES:
        assert ours.encode(text) == theirs.encode(text), text
    assert ours.encode("azb") == [vocab["ab"]]  # merged across the dropped "z"


def test_vocabulary_without_eot_matches_tokenizers(tmp_path, corpus):
    tokenizers = pytest.importorskip("tokenizers", reason="comparing with the tokenizers library")
    directory = train_vocab(tmp_path / "plain", corpus[:50_000], 800, eot="none")
    reference = tokenizers.Tokenizer(
        tokenizers.models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    )
    reference.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ours = Tokenizer.from_files(directory / "vocab.json", directory / "merges.txt")
    assert ours.eot_token is None
    for text in CASES:
        assert ours.encode(text) == reference.encode(text).ids, text


def test_real_gpt2_vocabulary():
    directory = os.environ.get("GPT2GEN_GPT2_DIR")
    if not directory:
        pytest.skip("set GPT2GEN_GPT2_DIR to a folder with GPT-2's vocab.json and merges.txt to run this")
    directory = Path(directory)
    names = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]
    files = next(((directory / v, directory / m) for v, m in names if (directory / v).exists()), None)
    if files is None:
        pytest.skip(f"no vocab.json/merges.txt or encoder.json/vocab.bpe in {directory}")
    ours = Tokenizer.from_files(*files)
    assert (ours.n_vocab, ours.eot_token) == (50257, 50256)
    assert ours.encode("Hello world") == [15496, 995] and ours.encode(" Hello world") == [18435, 995]
    transformers = pytest.importorskip("transformers", reason="comparing with transformers' GPT-2 tokenizer")
    theirs = transformers.GPT2Tokenizer(*map(str, files))
    for text in CASES + [make_corpus(100_000, seed=5)]:
        assert ours.encode(text) == theirs.encode(text)

